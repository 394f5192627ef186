"""Builds the EventSource polyfill bundle and the status page's script into the wheel, so no
runtime build is needed."""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithAssets(build_py):
    def run(self):
        super().run()
        if not self.dry_run:
            assets = runpy.run_path(str(Path(__file__).parent / "gateway" / "assets.py"))
            static = Path(self.build_lib) / "gateway" / "static"
            assets["build_assets"](static)
            assets["build_status_assets"](static)
            css = assets["STATUS_CSS"]
            (static / css.name).write_bytes(css.read_bytes())


setup(cmdclass={"build_py": BuildPyWithAssets})
