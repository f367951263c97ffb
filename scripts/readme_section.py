"""Replace a marked section of README.md with a file's contents: `python scripts/readme_section.py NAME FILE`.

The section is the text between `<!-- NAME:BEGIN -->` and `<!-- NAME:END -->`; `make eval-table` uses it to put
the `eval` experiment's results.md into the README, so the table there is always produced by the code.
"""
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/readme_section.py NAME FILE", file=sys.stderr)
        return 2
    name, source = argv
    begin, end = f"<!-- {name}:BEGIN -->", f"<!-- {name}:END -->"
    text = README.read_text()
    if begin not in text or end not in text:
        print(f"error: README.md has no {begin} ... {end} section", file=sys.stderr)
        return 2
    if not Path(source).is_file():
        print(f"error: {source} not found", file=sys.stderr)
        return 2
    head, rest = text.split(begin, 1)
    body = "\n".join("###" + line[1:] if line.startswith("# ") else line
                     for line in Path(source).read_text().strip().splitlines())  # demote the file's title
    README.write_text(f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}")
    print(f"README.md: section {name} <- {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
