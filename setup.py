"""Builds the EventSource polyfill bundle into the wheel, so no runtime build is needed."""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithAssets(build_py):
    def run(self):
        super().run()
        if not self.dry_run:
            assets = runpy.run_path(str(Path(__file__).parent / "gateway" / "assets.py"))
            assets["build_assets"](Path(self.build_lib) / "gateway" / "static")


setup(cmdclass={"build_py": BuildPyWithAssets})
