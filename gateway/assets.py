"""Build and load the EventSource polyfill that the gateway serves at /static/eventsource.js.

The polyfill is the files of ``static_js/src`` joined in ``SOURCES`` order (``_head.js`` and
``_tail.js`` open and close the one closure around them) and minified by webassets: rjsmin, then
``ES3Mangle``, which shortens local names with calmjs.parse, safely for IE8. (JScript puts a
``catch (x)`` clause's variable in the scope of the enclosing function, so a catch variable renamed
to the name of a local of that function, or of an outer name it uses, would overwrite it there:
every such catch variable is renamed once more, to a name used nowhere in the script.)

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
import itertools
import logging
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable

from calmjs.parse import asttypes, es5
from calmjs.parse.unparsers.es5 import minify_print
from calmjs.parse.walkers import Walker
from webassets import Bundle, Environment
from webassets.filter import Filter

log = logging.getLogger(__name__)

SRC_DIR = Path(__file__).resolve().parent.parent / "static_js" / "src"
PREBUILT = Path(__file__).resolve().parent / "static" / "eventsource.min.js"
OUTPUT_NAME = "eventsource.min.js"
# The status page's script: uPlot (from npm, as its package ships it minified, kept in
# static_js/vendor/ so that a checkout builds without npm) and the page's own code.
STATUS_SOURCES = (
    SRC_DIR.parent / "vendor" / "uPlot.iife.min.js",
    SRC_DIR.parent / "status" / "status.js",
)
STATUS_CSS = SRC_DIR.parent / "vendor" / "uPlot.min.css"
STATUS_PREBUILT = PREBUILT.parent / "status.min.js"
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


_FUNCTIONS = (asttypes.FuncDecl, asttypes.FuncExpr)


def _names(walker: Walker, node) -> Counter:
    return Counter(n.value for n in walker.filter(node, lambda n: isinstance(n, asttypes.Identifier)))


def _innermost_functions(walker: Walker, tree) -> Dict[int, object]:
    """Each catch clause (by id) mapped to the function whose scope its variable leaks into."""
    owner: Dict[int, object] = {}
    # Pre-order: a nested function comes after its parent and overwrites the entry.
    for function in itertools.chain([tree], walker.filter(tree, lambda n: isinstance(n, _FUNCTIONS))):
        for clause in walker.filter(function, lambda n: isinstance(n, asttypes.Catch)):
            owner[id(clause)] = function
    return owner


def _fresh_names(taken: Iterable[str]):
    taken = set(taken)
    for number in itertools.count():
        name = f"${number}"
        if name not in taken:
            yield name


def ie8_safe(source: str) -> str:
    """The script with every catch variable that IE8 would leak onto a used name renamed."""
    tree = es5(source)
    walker = Walker()
    fresh = _fresh_names(_names(walker, tree))
    owners = _innermost_functions(walker, tree)
    clauses = list(walker.filter(tree, lambda n: isinstance(n, asttypes.Catch)))
    for clause in clauses:
        name = clause.identifier.value
        if _names(walker, owners[id(clause)])[name] > _names(walker, clause)[name]:
            new = next(fresh)
            for node in walker.filter(clause, lambda n: isinstance(n, asttypes.Identifier)):
                if node.value == name and not isinstance(node, asttypes.PropIdentifier):
                    node.value = new
    return minify_print(tree, obfuscate=False)


def mangle(source: str) -> str:
    """Local names shortened, then made IE8-safe."""
    return ie8_safe(minify_print(es5(source), obfuscate=True, obfuscate_globals=False,
                                 shadow_funcname=False))


class ES3Mangle(Filter):
    """webassets filter: `mangle` on the joined output."""

    name = "es3-mangle"

    def output(self, _in, out, **kwargs) -> None:
        out.write(mangle(_in.read()))


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
    bundle = Bundle(*(str(p) for p in sources), filters=("rjsmin", ES3Mangle),
                    output=OUTPUT_NAME)
    env.register("eventsource", bundle)
    bundle.build(force=True)
    out = output_dir / OUTPUT_NAME
    log.debug("built %s (%d bytes)", out, out.stat().st_size)
    return out


def build_status_assets(output_dir: Path) -> Path:
    """The status page's script (uPlot as shipped, the page's code minified) into
    ``output_dir/status.min.js``; returns that path."""
    missing = [str(p) for p in STATUS_SOURCES if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"status page sources missing: {', '.join(missing)}")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    env = Environment(directory=str(output_dir), url="/status", cache=False, manifest=False)
    vendor, page = (str(p) for p in STATUS_SOURCES)
    bundle = Bundle(Bundle(vendor), Bundle(page, filters="rjsmin"), output=STATUS_PREBUILT.name)
    env.register("status", bundle)
    bundle.build(force=True)
    return output_dir / STATUS_PREBUILT.name


def _prebuilt_is_fresh(prebuilt: Path, sources: Iterable[Path]) -> bool:
    if not prebuilt.is_file():
        return False
    sources = [p for p in sources if p.is_file()]
    return not sources or prebuilt.stat().st_mtime >= max(p.stat().st_mtime for p in sources)


def _load(prebuilt: Path, sources: Iterable[Path], build, build_dir: Path | None) -> BuiltAsset:
    if _prebuilt_is_fresh(prebuilt, sources):
        log.debug("using prebuilt %s", prebuilt)
        return BuiltAsset.from_body(prebuilt.read_bytes())
    if build_dir is not None:
        return BuiltAsset.from_body(build(build_dir).read_bytes())
    with tempfile.TemporaryDirectory(prefix="sse-gateway-assets-") as tmp:
        return BuiltAsset.from_body(build(Path(tmp)).read_bytes())


def load_bundle(build_dir: Path | None = None) -> BuiltAsset:
    """The bundle: the prebuilt file if fresh, else built into build_dir (else a temporary dir)."""
    return _load(PREBUILT, source_paths(), build_assets, build_dir)


def load_status_bundle() -> BuiltAsset:
    """The status page's script, prebuilt or built as `load_bundle`."""
    return _load(STATUS_PREBUILT, STATUS_SOURCES, build_status_assets, None)


def load_status_css() -> str:
    """uPlot's stylesheet: a file beside the prebuilt script in a package, else the vendored one."""
    packaged = STATUS_PREBUILT.parent / STATUS_CSS.name
    return (packaged if packaged.is_file() else STATUS_CSS).read_text("utf-8")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_assets(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
