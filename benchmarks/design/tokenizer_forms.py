"""An artifact's two tokenizer forms side by side: tokenizer.json read by `tokenizers`, and the
compact arrays the export writes beside it (edgeds/compact_tokenizer.py). Each load is timed in
a fresh process (what `edgeds.load` pays once per job); encoding is timed on each text, its ids
compared.

    python -m benchmarks.design.tokenizer_forms ARTIFACT [--rounds 3] [--text FILE ...]

Without --text: the sources of Python's argparse, json and email packages.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from edgeds.artifact import load_artifact
from edgeds.compact_tokenizer import CompactTokenizer

# (import, read): the modules come in before the clock starts, as edgeds.load finds them
LOAD = {
    "tokenizer.json": ("from tokenizers import Tokenizer", "Tokenizer.from_file({path!r})"),
    "compact": ("from edgeds.compact_tokenizer import CompactTokenizer",
                "CompactTokenizer(Path({path!r}))"),
}


def load_seconds(form: str, path: Path) -> float:
    imports, read = LOAD[form]
    code = (
        f"import time; from pathlib import Path; {imports}\n"
        f"t = time.perf_counter(); {read.format(path=str(path))}\n"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def default_texts() -> list[Path]:
    import argparse as a
    import email
    import json as j

    return [Path(a.__file__), Path(j.__file__).parent / "decoder.py",
            Path(email.__file__).parent / "message.py"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("artifact", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--text", type=Path, nargs="*", default=None)
    args = p.parse_args()
    art = load_artifact(args.artifact, verify=False)
    tok = art.manifest.tokenizer
    if not tok.compact:
        sys.exit(f"{args.artifact}: no compact tokenizer (exported before it, or not one it holds)")
    paths = {"tokenizer.json": art.path(tok.file), "compact": art.path(tok.compact)}
    loads = {form: [] for form in paths}
    for _ in range(args.rounds):  # alternated, so that a slow moment hits both
        for form, path in paths.items():
            loads[form].append(load_seconds(form, path))
    print("| form | load s (fresh process, each round) |")
    print("|---|---|")
    for form, secs in loads.items():
        print(f"| {form} | {', '.join(f'{s:.3f}' for s in secs)} |")

    ref, compact = Tokenizer.from_file(str(paths["tokenizer.json"])), CompactTokenizer(
        paths["compact"])
    rows = []
    for f in args.text or default_texts():
        text = f.read_text(encoding="utf-8", errors="replace")
        t0 = time.perf_counter()
        want = ref.encode(text, add_special_tokens=False).ids
        t1 = time.perf_counter()
        got = compact.encode(text)
        t2 = time.perf_counter()
        rows.append({"text": f.name, "chars": len(text), "tokens": len(want), "same": got == want,
                     "tokenizers_s": round(t1 - t0, 4), "compact_s": round(t2 - t1, 4)})
    print("\n| text | chars | tokens | same ids | tokenizers s | compact s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['text']} | {r['chars']} | {r['tokens']} | {r['same']} | "
              f"{r['tokenizers_s']} | {r['compact_s']} |")
    print(json.dumps({"load_s": loads, "encode": rows}))


if __name__ == "__main__":
    main()
