"""The commands and links in README.md and docs/*.md stay valid.

Every fenced shell block is parsed (not run): a ``python``/``torchrun`` command must name a script
or module that exists and only flags its fire entry point accepts (read from the source with
``ast``, so nothing heavy is imported), a ``make`` target must exist in the Makefile, a ``bash``
script must exist. Relative links must point at existing files (and headings, for ``#anchors``).
Running the commands is left to the end-to-end tests.
"""

from __future__ import annotations

import ast
import re
import shlex
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 320
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
SHELL_WORDS = {"for", "do", "done", "then", "else", "fi", "if", "while", "time", "exec", "env", "sudo"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
ANY_FLAG = None  # an entry point whose parameters cannot be known statically (``**kwargs``)


def doc_files() -> List[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


# ----------------------------------------------------------------------------- markdown


def fenced_blocks(text: str) -> List[Tuple[str, str]]:
    """(language, body) of every fenced code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, body = m.group(2), m.group(3).lower(), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((lang, "\n".join(body)))
        i += 1
    return blocks


def unfenced(text: str) -> Iterator[str]:
    """The lines of a Markdown text outside fenced blocks."""
    in_block, fence = False, ""
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and not in_block:
            in_block, fence = True, m.group(2)
            continue
        if in_block:
            if line.strip().startswith(fence):
                in_block = False
            continue
        yield line


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code spans (where links live)."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in unfenced(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def heading_anchors(path: Path) -> FrozenSet[str]:
    """Anchors computed from the raw heading lines (inline code kept as text)."""
    seen: Dict[str, int] = {}
    out = set()
    for line in unfenced(path.read_text(encoding="utf-8")):
        h = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if h:
            base = slug(h.group(1).replace("`", ""))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def link_problems(path: Path, text: Optional[str] = None) -> List[str]:
    """Relative links of a Markdown file whose file or heading does not exist."""
    text = path.read_text(encoding="utf-8") if text is None else text
    problems = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: link to missing {target}")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
            problems.append(f"{path.name}: link to missing heading {target}")
    return problems


# ----------------------------------------------------------------------------- shell commands


def shell_commands(body: str) -> Iterator[List[str]]:
    """Simple commands of a shell block, as word lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", body)
    for line in joined.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            words = list(lex)
        except ValueError as e:  # unbalanced quotes
            raise AssertionError(f"cannot parse shell line {line!r}: {e}") from e
        command: List[str] = []
        for w in words + [";"]:
            if w and set(w) <= set(";&|"):
                while command and (command[0] in SHELL_WORDS or re.match(r"^[A-Za-z_]\w*=", command[0])
                                   or (command[0].startswith("-") and not command[0].startswith("--"))):
                    command.pop(0)  # keywords, VAR=value prefixes, `time -v` style options
                if command:
                    yield command
                command = []
            else:
                command.append(w)


def _is_python(word: str) -> bool:
    return re.fullmatch(r"python[\d.]*", Path(word).name) is not None


def _is_launcher(word: str) -> bool:
    return _is_python(word) or Path(word).name == "torchrun"


@lru_cache(maxsize=None)
def make_targets() -> FrozenSet[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([^\s:=#][^:=#]*?)\s*::?(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(t for t in m.group(1).split() if "%" not in t)
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
    targets.discard(".PHONY")
    return frozenset(targets)


def module_file(module: str) -> Optional[Path]:
    """The source file of ``python -m module`` inside the project (None when not found)."""
    parts = module.split(".")
    for base in (ROOT, ROOT / "src"):
        for cand in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__main__.py")):
            if cand.is_file():
                return cand
    return None


def _import_file(node: ast.ImportFrom, importer: Path) -> Optional[Path]:
    """The project file an ``from X import name`` statement reads (relative imports included)."""
    if node.level == 0:
        return module_file(node.module or "")
    base = importer.parent
    for _ in range(node.level - 1):
        base = base.parent
    parts = (node.module or "").split(".") if node.module else []
    for cand in (base.joinpath(*parts).with_suffix(".py") if parts else None, base.joinpath(*parts, "__init__.py")):
        if cand is not None and cand.is_file():
            return cand
    return None


def _params(fn: ast.AST) -> Optional[FrozenSet[str]]:
    a = fn.args  # type: ignore[attr-defined]
    if a.kwarg is not None:
        return ANY_FLAG
    return frozenset(x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs])


def _function_params(path: Path, name: str, depth: int = 0) -> Optional[FrozenSet[str]]:
    """Parameters of function ``name`` defined in ``path`` or imported into it (followed statically)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return _params(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and depth < 5:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    src = _import_file(node, path)
                    if src is not None:
                        return _function_params(src, alias.name, depth + 1)
    raise AssertionError(f"{path.relative_to(ROOT)}: cannot find function {name!r}")


def _fire_target(tree: ast.Module) -> Optional[ast.AST]:
    """The argument of ``fire.Fire(...)`` (or of ``run_main(...)``), if the module calls it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("Fire", "run_main"):
                return node.args[0]
    return None


def _callable_name(node: ast.AST) -> str:
    while isinstance(node, ast.Call) and node.args:  # cli(main), functools.partial(main, ...)
        node = node.args[0]
    if isinstance(node, ast.Name):
        return node.id
    raise AssertionError(f"unsupported fire target {ast.dump(node)}")


@lru_cache(maxsize=None)
def entry_points(path: Path) -> Optional[Dict[Optional[str], Optional[FrozenSet[str]]]]:
    """``{None: params}`` for ``fire.Fire(main)``, ``{command: params}`` for ``fire.Fire({...})``;
    None when the file has no fire entry point (its arguments are not checked)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    target = _fire_target(tree)
    if target is None:
        return None
    if isinstance(target, ast.Dict):
        return {ast.literal_eval(k): _function_params(path, _callable_name(v))
                for k, v in zip(target.keys, target.values)}
    return {None: _function_params(path, _callable_name(target))}


def _flag_ok(flag: str, params: Optional[FrozenSet[str]]) -> bool:
    name = flag[2:].split("=", 1)[0].replace("-", "_")
    if params is ANY_FLAG or name in ("help",):
        return True
    return name in params or (name.startswith("no") and name[2:] in params)


def command_problems(words: List[str]) -> List[str]:
    """What is wrong with one simple command (an empty list when nothing is)."""
    text = " ".join(words)
    if words[0] == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return [f"{text}: no make target {t!r}" for t in targets if t not in make_targets()]
    if words[0] in ("bash", "sh") and len(words) > 1:
        script = words[1]
        return [] if (ROOT / script).is_file() else [f"{text}: no script {script}"]
    launchers = [i for i, w in enumerate(words) if _is_launcher(w)]
    if not launchers:
        return []
    rest = words[launchers[0] + 1:]
    if "-m" in rest and not any(w.endswith(".py") for w in rest[: rest.index("-m")]):
        i = rest.index("-m")
        if i + 1 >= len(rest):
            return [f"{text}: -m without a module"]
        module, args = rest[i + 1], rest[i + 2:]
        path = module_file(module)
        if path is None:
            if module.split(".")[0] in ("pytest", "pip", "venv", "torch"):
                return []
            return [f"{text}: no module {module} in the project"]
    else:
        scripts = [j for j, w in enumerate(rest) if w.endswith(".py")]
        if not scripts:
            return []  # e.g. `python -c ...`
        script, args = rest[scripts[0]], rest[scripts[0] + 1:]
        path = ROOT / script
        if not path.is_file():
            return [f"{text}: no script {script}"]
    if "--" in args:
        args = args[: args.index("--")]  # fire's own flags follow a bare --
    entries = entry_points(path)
    if entries is None:
        return []
    if None in entries:
        params = entries[None]
    else:
        positional = [a for a in args if not a.startswith("-")]
        if not positional or positional[0] not in entries:
            return [f"{text}: {path.name} needs one of the commands {sorted(entries)}"]
        params = entries[positional[0]]
    return [f"{text}: {path.relative_to(ROOT)} has no flag {a.split('=', 1)[0]}"
            for a in args if a.startswith("--") and not _flag_ok(a, params)]


def doc_commands() -> List[Tuple[str, List[str]]]:
    found = []
    for path in doc_files():
        for lang, body in fenced_blocks(path.read_text(encoding="utf-8")):
            if lang in SHELL_LANGS:
                found.extend((path.name, words) for words in shell_commands(body))
    return found


# ----------------------------------------------------------------------------- the checks


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}); move details to docs/"


def test_readme_starts_with_make_demo_and_make_test():
    blocks = [b for lang, b in fenced_blocks(README.read_text(encoding="utf-8")) if lang in SHELL_LANGS]
    first = [w[:2] for w in shell_commands(blocks[0])][:2]
    assert first == [["make", "demo"], ["make", "test"]]


def test_doc_commands_name_existing_scripts_flags_and_targets():
    commands = doc_commands()
    assert len(commands) > 30  # the parser found the commands at all
    problems = [f"{name}: {p}" for name, words in commands for p in command_problems(words)]
    assert not problems, "\n".join(problems)


def test_every_script_exposes_its_flags():
    """The run_*.py scripts must stay readable by this test (else their flags go unchecked)."""
    scripts = sorted(ROOT.glob("run_*.py"))
    assert scripts
    for script in scripts:
        entries = entry_points(script)
        assert entries and entries.get(None), f"{script.name}: no fire entry point with parameters found"


def test_links_point_at_existing_files_and_headings():
    problems = [p for path in doc_files() for p in link_problems(path)]
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    missing = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs").glob("*.md"))
               if p.relative_to(ROOT).as_posix() not in text]
    assert not missing, f"README.md does not link {missing}"


def test_readme_has_python_api_section():
    assert re.search(r"^## Python API\s*$", README.read_text(encoding="utf-8"), re.M)


# ----------------------------------------------------------------------------- the checker itself


def _problems(block: str) -> List[str]:
    return [p for words in shell_commands(block) for p in command_problems(words)]


@pytest.mark.parametrize("block", [
    "python run_evaluate_direct_llama.py --data_pth samples/x.json",            # misspelled flag
    "torchrun --nproc_per_node 2 run_evaluate_channel_llama.py --save_hidden",  # flag of another script
    "python run_evaluate_direct_llama.py \\\n    --ckpt_dir c --tokenizer-pth t",  # after a continuation
    "for s in 1 2; do python run_seeds.py --seed $s; done",                     # inside a loop
    "python run_no_such_script.py",
    "python -m llama.no_such_module",
    "python -m llama.convert convert a b --shard 2",
    "python benchmarks/bench_loading.py rnu params.json",
    "make no-such-target",
    "bash benchmarks/no_such.sh",
])
def test_checker_rejects_bad_commands(block):
    assert _problems(block), f"accepted a bad command: {block!r}"


@pytest.mark.parametrize("block", [
    "python run_preprocess_direct_ag_news.py --nosample --data_path=x.json # comment --bogus",
    "python run_preprocess_channel_ag_news.py --sample=False --n-sample 4",
    "D=out; /usr/bin/time -v .venv/bin/python run_evaluate_direct_llama.py --data_path $D/x.json --help",
    "python -m llama.convert convert a b --to hf --shards 2",
    "python -m classification.report.table a.metrics.json",
    "make demo N_SAMPLE=20 && make test",
])
def test_checker_accepts_good_commands(block):
    assert not _problems(block)


def test_link_checker_rejects_missing_targets():
    text = "See [a](docs/no_such_page.md), [b](#no-such-heading) and [c](https://example.org/x)."
    problems = link_problems(README, text)
    assert len(problems) == 2, problems


def test_slug_matches_github():
    assert slug("Precision and int8: --quantize int8") == "precision-and-int8---quantize-int8"
    assert slug("Seeds: run_seeds.py") == "seeds-run_seedspy"


def test_flags_are_found_through_an_import(tmp_path):
    """A script whose main() moved into a module (``from pkg.mod import main``) is still checked."""
    script = tmp_path / "moved.py"
    script.write_text("import fire\nfrom run_evaluate_direct_llama import main\n\nfire.Fire(main)\n")
    (params,) = entry_points(script).values()
    assert "data_path" in params and "save_hidden" in params
