"""Replace a marked section of a Markdown file with a file's contents:

    python scripts/readme_section.py NAME FILE [TARGET]      # TARGET defaults to README.md

The section is the text between `<!-- NAME:BEGIN -->` and `<!-- NAME:END -->`; `make quality`, `make eval-table`
and `make evidence-report` use it to put an experiment's results.md into the README or docs/, so the tables there
are always produced by the code.
"""
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python scripts/readme_section.py NAME FILE [TARGET]", file=sys.stderr)
        return 2
    name, source = argv[:2]
    target = Path(argv[2]) if len(argv) == 3 else README
    begin, end = f"<!-- {name}:BEGIN -->", f"<!-- {name}:END -->"
    if not target.is_file():
        print(f"error: {target} not found", file=sys.stderr)
        return 2
    text = target.read_text()
    if begin not in text or end not in text:
        print(f"error: {target.name} has no {begin} ... {end} section", file=sys.stderr)
        return 2
    if not Path(source).is_file():
        print(f"error: {source} not found", file=sys.stderr)
        return 2
    head, rest = text.split(begin, 1)
    body = "\n".join("###" + line[1:] if line.startswith("# ") else line
                     for line in Path(source).read_text().strip().splitlines())  # demote the file's title
    target.write_text(f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}")
    print(f"{target}: section {name} <- {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
