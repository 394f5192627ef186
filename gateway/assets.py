"""Build and load the EventSource polyfill that the gateway serves at /static/eventsource.js.

The polyfill is the files of ``static_js/src`` joined in ``SOURCES`` order (``_head.js`` and
``_tail.js`` open and close the one closure around them) and minified by webassets' rjsmin filter.

Where the files are: the source directory is ``Path(__file__).parent.parent / "static_js" / "src"``.
A source checkout has it there; a package that ships the sources must keep that layout. A released
wheel ships the bundle prebuilt as ``gateway/static/eventsource.min.js``; ``load_bundle`` prefers it
unless the sources are newer (an edited checkout), and builds from the sources otherwise.

This module imports neither gevent nor Flask. Run as a script with a directory argument it builds
the bundle there: ``npm run build`` in static_js/ does so through runpy (which keeps gateway/ off
sys.path), into static_js/build/, which ``npm run lint`` then checks.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from webassets import Bundle, Environment

log = logging.getLogger(__name__)

SRC_DIR = Path(__file__).resolve().parent.parent / "static_js" / "src"
PREBUILT = Path(__file__).resolve().parent / "static" / "eventsource.min.js"
OUTPUT_NAME = "eventsource.min.js"
SOURCES = (
    "_head.js",
    "util.js",
    "parser.js",
    "xhr_stream.js",
    "xdr_stream.js",
    "xhr_poll.js",
    "jsonp_poll.js",
    "shared.js",
    "eventsource.js",
    "_tail.js",
)


@dataclass(frozen=True)
class BuiltAsset:
    """The minified bundle, ready to serve."""

    body: bytes
    gzipped: bytes
    etag: str  # quoted strong ETag, from the content hash
    digest: str  # short hex content hash, for /static/eventsource.<digest>.js

    @classmethod
    def from_body(cls, body: bytes) -> BuiltAsset:
        sha = hashlib.sha256(body).hexdigest()
        return cls(
            body=body,
            gzipped=gzip.compress(body, compresslevel=9, mtime=0),
            etag=f'"{sha[:32]}"',
            digest=sha[:12],
        )


def source_paths(src_dir: Path = SRC_DIR) -> list[Path]:
    """The polyfill's source files, in bundle order."""
    return [src_dir / name for name in SOURCES]


def build_assets(output_dir: Path) -> Path:
    """Minify the sources into ``output_dir/eventsource.min.js`` and return that path."""
    sources = source_paths()
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"polyfill sources missing: {', '.join(missing)}")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    # No webassets cache or manifest: they would leave files beside the output for one small bundle.
    env = Environment(directory=str(output_dir), url="/static", cache=False, manifest=False)
    bundle = Bundle(*(str(p) for p in sources), filters="rjsmin", output=OUTPUT_NAME)
    env.register("eventsource", bundle)
    bundle.build(force=True)
    out = output_dir / OUTPUT_NAME
    log.debug("built %s (%d bytes)", out, out.stat().st_size)
    return out


def _prebuilt_is_fresh() -> bool:
    if not PREBUILT.is_file():
        return False
    sources = [p for p in source_paths() if p.is_file()]
    return not sources or PREBUILT.stat().st_mtime >= max(p.stat().st_mtime for p in sources)


def load_bundle(build_dir: Path | None = None) -> BuiltAsset:
    """The bundle: the prebuilt file if fresh, else built into build_dir (else a temporary dir)."""
    if _prebuilt_is_fresh():
        log.debug("using prebuilt %s", PREBUILT)
        return BuiltAsset.from_body(PREBUILT.read_bytes())
    if build_dir is not None:
        return BuiltAsset.from_body(build_assets(build_dir).read_bytes())
    with tempfile.TemporaryDirectory(prefix="sse-gateway-assets-") as tmp:
        return BuiltAsset.from_body(build_assets(Path(tmp)).read_bytes())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_assets(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
