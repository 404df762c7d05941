"""The documentation holds together: every relative link and anchor in README.md, CHANGELOG.md and
docs/*.md resolves, every `mllm-unlearn ...` command shown in their code blocks parses (the command's
own --help accepts its options), and the README's Python example imports what it names."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mllm_unlearn.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Pages other changes write: a link to one is checked once the page exists.
MAX_README_LINES = 250
MAX_README_EXAMPLE_LINES = 20


def doc_pages() -> list[Path]:
    pages = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [page for page in pages if page.is_file()]


# --- Markdown ------------------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class Block:
    lang: str
    start: int  # line number (1-based) of the block's first line of code
    lines: list[str]


def parse_markdown(text: str) -> tuple[list[tuple[int, str]], list[Block]]:
    """(prose lines with their line numbers, fenced code blocks)."""
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                blocks.append(Block(match.group(2).lower(), number + 1, []))
            else:
                prose.append((number, line))
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match.group(2):
            fence = None
        else:
            blocks[-1].lines.append(line)
    return prose, blocks


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup dropped, lowercase, punctuation but hyphens and
    underscores removed, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    """Every anchor a page's headings give, duplicates numbered -1, -2... as GitHub numbers them."""
    prose, _ = parse_markdown(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for _, line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        anchors.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return anchors


INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def links_of(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and link reference definition outside code."""
    prose, _ = parse_markdown(page.read_text(encoding="utf-8"))
    found = []
    for number, line in prose:
        line = re.sub(r"(`+)(?:(?!\1).)*?\1", "", line)  # code spans are not links
        found.extend((number, m.group(1)) for m in INLINE_LINK.finditer(line))
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            found.append((number, definition.group(1)))
    return found


def relative_links() -> list[tuple[Path, int, str]]:
    return [(page, number, target) for page in doc_pages() for number, target in links_of(page)
            if not SCHEME.match(target)]


def test_the_anchor_rule_is_githubs():
    assert github_anchor("Choosing hyperparameters: `mllm-unlearn sweep` and `run --preset`") == \
        "choosing-hyperparameters-mllm-unlearn-sweep-and-run---preset"
    assert github_anchor("MIP-Editor") == "mip-editor"
    assert github_anchor("Memory at 7B scale") == "memory-at-7b-scale"
    assert github_anchor("The `tiny_presets.json` file, [linked](x.md)!") == "the-tiny_presetsjson-file-linked"
    assert github_anchor("[0.2.0]") == "020"


def test_duplicate_headings_are_numbered(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n## Notes\n\n```bash\n# Notes\n```\n\n### Notes\n")
    assert anchors_of(page) == {"notes", "notes-1", "notes-2"}  # the one in a code block is no heading


def test_links_are_found_outside_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [a](a.md#x), ![img](i.png) and `[not](code.md)`.\n\n```\n[no](block.md)\n```\n"
                    "[ref]: b.md\n")
    assert [target for _, target in links_of(page)] == ["a.md#x", "i.png", "b.md"]


def test_the_documentation_has_relative_links_to_check():
    pages = {page.name for page, _, _ in relative_links()}
    assert {"README.md"} <= pages
    assert len(relative_links()) > 20


@pytest.mark.parametrize("page,line,target", relative_links(),
                         ids=[f"{p.relative_to(ROOT)}:{n}:{t}" for p, n, t in relative_links()])
def test_relative_link_resolves(page: Path, line: int, target: str):
    path_part, _, anchor = target.partition("#")
    if path_part:
        resolved = (ROOT / path_part.lstrip("/")) if path_part.startswith("/") else (page.parent / path_part)
        resolved = resolved.resolve()
        assert resolved.exists(), f"{page.relative_to(ROOT)}:{line}: link to {target}: {resolved} does not exist"
    else:
        resolved = page
    if anchor and resolved.suffix == ".md":
        assert anchor in anchors_of(resolved), (
            f"{page.relative_to(ROOT)}:{line}: link to {target}: no heading of {resolved.name} gives #{anchor} "
            f"(it has {sorted(anchors_of(resolved))})")


# --- Commands ------------------------------------------------------------------------------------

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}
PREFIXES = {"time", "do", "then", "else", "sudo", "exec", "env", "nohup"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*>")  # <name>, <hash>: a value to fill in
VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
ELLIPSES = {"...", "…"}


def strip_comment(line: str) -> str:
    """The line without a shell comment (a # outside quotes that starts a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def logical_lines(lines: list[str], start: int) -> list[tuple[int, str]]:
    """Lines with their `\\` continuations joined, comments and prompts dropped, numbered by their
    first line."""
    joined: list[tuple[int, str]] = []
    pending, first = "", start
    for offset, raw in enumerate(lines):
        if not pending:
            first = start + offset
        line = strip_comment(raw).rstrip()
        if not pending:
            line = re.sub(r"^\s*[$>]\s+", "", line)  # a shell prompt
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append((first, pending + line))
        pending = ""
    if pending:
        joined.append((first, pending))
    return joined


def split_words(line: str) -> list[str]:
    line = PLACEHOLDER.sub("X", line)
    line = VARIABLE.sub("0", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def cli_arguments(words: list[str]) -> list[str] | None:
    """The arguments `mllm-unlearn` gets from one simple command, or None when the command does not
    run mllm-unlearn: `mllm-unlearn ...`, `python -m mllm_unlearn ...`, `accelerate launch ... -m
    mllm_unlearn ...`, `torchrun ... -m mllm_unlearn ...` and `make run RUN_ARGS="..."`."""
    while words and (words[0] in PREFIXES or ENV_ASSIGNMENT.match(words[0])):
        words = words[1:]
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    if program == "mllm-unlearn":
        rest = words[1:]
    elif "-m" in words[:-1] and words[words.index("-m") + 1] == "mllm_unlearn":
        rest = words[words.index("-m") + 2:]
    elif program == "make" and "run" in words[1:]:
        run_args = [w.partition("=")[2] for w in words[1:] if w.startswith("RUN_ARGS=")]
        rest = ["run", *(shlex.split(run_args[-1]) if run_args else [])]
    else:
        return None
    return [w for w in rest if w not in ELLIPSES]


def commands_in(lines: list[str], start: int) -> list[tuple[int, list[str]]]:
    found = []
    for number, line in logical_lines(lines, start):
        if "[OPTIONS]" in line or "COMMAND [ARGS]" in line:  # a generated usage line (docs/cli.md)
            continue
        words = split_words(line)
        simple: list[str] = []
        for word in [*words, ";"]:
            if word in SEPARATORS:
                arguments = cli_arguments(simple)
                if arguments is not None:
                    found.append((number, arguments))
                simple = []
            else:
                simple.append(word)
    return found


def documented_commands() -> list[tuple[Path, int, list[str]]]:
    commands = []
    for page in doc_pages():
        _, blocks = parse_markdown(page.read_text(encoding="utf-8"))
        for block in blocks:
            if block.lang in SHELL_LANGS:
                commands.extend((page, number, args) for number, args in commands_in(block.lines, block.start))
    return commands


def test_commands_are_read_as_a_shell_reads_them():
    block = ["# a comment line",
             "mllm-unlearn run --method ga --forget 10   # built-in world",
             "CUDA_VISIBLE_DEVICES=0 mllm-unlearn sweep --method npo \\",
             "    --trials 30 -o 'note=a # b'",
             "accelerate launch --multi_gpu --num_processes 2 -m mllm_unlearn run --model CKPT ...",
             "for s in 0 1; do mllm-unlearn run --seed $s --name npo-$s; done",
             "$ python -m mllm_unlearn export runs/<name> --out out",
             "make run RUN_ARGS=\"--family qwen2.5-vl --name q\"",
             "huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir /ckpt/llava",
             "mllm-unlearn run [OPTIONS]"]
    assert commands_in(block, 1) == [
        (2, ["run", "--method", "ga", "--forget", "10"]),
        (3, ["sweep", "--method", "npo", "--trials", "30", "-o", "note=a # b"]),
        (5, ["run", "--model", "CKPT"]),
        (6, ["run", "--seed", "0", "--name", "npo-0"]),
        (7, ["export", "runs/X", "--out", "out"]),
        (8, ["run", "--family", "qwen2.5-vl", "--name", "q"]),
    ]


def test_the_documentation_shows_commands_to_check():
    commands = documented_commands()
    assert len(commands) > 30
    assert sum(page == README for page, _, _ in commands) >= 5
    assert {args[0] for _, _, args in commands if args} >= {"run", "finetune", "sweep", "export", "attack",
                                                             "sequence", "methods", "report", "compare"}


def check_parses(args: list[str]) -> None:
    """`mllm-unlearn COMMAND --help ARGS...`: Click parses every option given (an unknown option or
    one missing its value fails) and then prints the help instead of running the command."""
    invocation = [args[0], "--help", *args[1:]] if args else ["--help"]
    result = CliRunner().invoke(app, invocation)
    assert result.exit_code == 0, f"mllm-unlearn {' '.join(args)}:\n{result.output}"
    assert "Usage" in result.output


def test_an_unknown_option_fails_the_check():
    with pytest.raises(AssertionError, match="No such option"):
        check_parses(["run", "--method", "ga", "--no-such-option", "1"])
    with pytest.raises(AssertionError, match="No such command"):
        check_parses(["unlearn-everything"])


@pytest.mark.parametrize("page,line,args", documented_commands(),
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in documented_commands()])
def test_documented_command_parses(page: Path, line: int, args: list[str]):
    check_parses(args)


def test_a_module_launch_finds_the_package_entry_point():
    if any("-m" in line and "mllm_unlearn" in line for page in doc_pages() for line in page.read_text().splitlines()):
        assert importlib.util.find_spec("mllm_unlearn.__main__") is not None


# --- README and Python examples --------------------------------------------------------------------

def python_blocks(page: Path) -> list[Block]:
    _, blocks = parse_markdown(page.read_text(encoding="utf-8"))
    return [block for block in blocks if block.lang in ("python", "py")]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; depth goes to docs/"


def test_readme_python_example_is_short_and_uses_the_top_level_package():
    import mllm_unlearn

    blocks = python_blocks(README)
    assert blocks, "README.md shows a Python example"
    for block in blocks:
        assert len(block.lines) <= MAX_README_EXAMPLE_LINES
        imported = []
        for node in ast.walk(ast.parse("\n".join(block.lines))):
            if isinstance(node, ast.ImportFrom):
                assert node.module == "mllm_unlearn", f"README.md:{block.start}: import from {node.module}"
                imported += [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "mllm_unlearn" for alias in node.names)
        assert imported
        missing = [name for name in imported if name not in mllm_unlearn.__all__]
        assert not missing, f"README.md:{block.start}: not exported by mllm_unlearn: {missing}"


def python_imports() -> list[tuple[Path, int, str, str]]:
    found = []
    for page in doc_pages():
        for block in python_blocks(page):
            tree = ast.parse("\n".join(block.lines))  # every Python example is valid Python
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mllm_unlearn":
                    found += [(page, block.start + node.lineno - 1, node.module, a.name) for a in node.names]
    return found


@pytest.mark.parametrize("page,line,module,name", python_imports(),
                         ids=[f"{p.relative_to(ROOT)}:{n}:{m}.{a}" for p, n, m, a in python_imports()])
def test_documented_python_import_resolves(page: Path, line: int, module: str, name: str):
    assert hasattr(importlib.import_module(module), name), f"{page.relative_to(ROOT)}:{line}: {module}.{name}"
