"""Extract the chapter's code listings from the chapter text and run them.

The chapter text (vae-chapter.txt) lost the indentation of its listings: every line is
flush left. `restore_listing` puts it back with a small deterministic heuristic, enough for
the listings used here:

* class listings: the class line at 0; lines before the first ``def`` (the class
  docstring) at 4; ``def`` lines at 4; every other line at 8 (lines inside an open
  ``nn.Sequential(`` need no particular indentation). Triple-quoted docstrings are kept
  intact at the indentation of their opening quotes. The class ends after a ``return``
  line whose next non-blank, non-comment line is not a ``def``.
* free functions: the ``def`` line at 0, body at 4. A line ending in ``:`` that opens a
  ``for``/``with``/``if``/``while``/``else``/``elif`` block indents the following lines by
  4 more. The chapter's loops all end with a run of accumulator updates (``x += ...``):
  when such a run ends, every open block is closed (back to 4). The function ends at its
  first ``return`` line (each listed function has exactly one, at its end).

`chapter_namespace` execs the restored listings with ``torch``, ``nn`` and ``F`` in the
namespace. `source_tokens` / `chapter_tokens` give token streams (comments, blank lines and
docstrings dropped, INDENT/DEDENT kept so nesting is compared too) for checking that
vae_torch_ref's code is the chapter's code.
"""
import ast
import inspect
import io
import os
import tokenize

CLASS_NAMES = ("Autoencoder", "VAE", "ConvVAE", "CelebAVAE")
FUNCTION_NAMES = ("kl_divergence_gaussian", "vae_loss", "reparameterize",
                  "train_epoch", "test_epoch")
LISTING_NAMES = CLASS_NAMES + FUNCTION_NAMES

_BLOCK_OPENERS = ("for ", "with ", "if ", "while ", "elif ", "else:")


def default_chapter_path():
    """$VAE_CHAPTER_PATH, else ../shared/chapter/vae-chapter.txt beside the checkout."""
    env = os.environ.get("VAE_CHAPTER_PATH")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, "..", "shared", "chapter", "vae-chapter.txt")


def _read_lines(chapter_path):
    with open(chapter_path, encoding="utf-8") as f:
        return f.read().splitlines()


def _find_start(lines, name):
    if name in CLASS_NAMES:
        prefix = "class %s(" % name
        ok = lambda s: s.startswith(prefix)
    else:
        prefix = "def %s(" % name
        # the free function, not a method of the same name (methods take self)
        ok = lambda s: s.startswith(prefix) and not s.startswith(prefix + "self")
    for i, line in enumerate(lines):
        if ok(line.strip()):
            return i
    raise ValueError("listing %r not found in the chapter text" % name)


def _next_code_line(lines, i):
    """The next non-blank, non-comment line after index i ('' at the end)."""
    for line in lines[i + 1:]:
        s = line.strip()
        if s and not s.startswith("#"):
            return s
    return ""


def _opens_docstring(s):
    return s.startswith(('"""', "'''")) and s.count(s[:3]) == 1


def restore_listing(lines, name):
    """Source of the listing `name` with its indentation restored."""
    start = _find_start(lines, name)
    is_class = name in CLASS_NAMES
    out = [lines[start].strip()]
    in_doc = None          # indentation of an open docstring, else None
    seen_def = False
    stack = [4]            # free functions: indentation of the current block
    for i in range(start + 1, len(lines)):
        s = lines[i].strip()
        if in_doc is not None:
            out.append(" " * in_doc + s if s else "")
            if '"""' in s or "'''" in s:
                in_doc = None
            continue
        if not s:
            out.append("")
            continue
        if is_class:
            if s.startswith("def "):
                seen_def = True
                indent = 4
            else:
                indent = 8 if seen_def else 4
        else:
            indent = stack[-1]
        out.append(" " * indent + s)
        if _opens_docstring(s):
            in_doc = indent
            continue
        if s == "return" or s.startswith("return "):
            if not is_class or not _next_code_line(lines, i).startswith("def "):
                break
            continue
        if not is_class:
            if s.endswith(":") and s.startswith(_BLOCK_OPENERS):
                stack.append(stack[-1] + 4)
            elif "+=" in s and "+=" not in _next_code_line(lines, i):
                del stack[1:]
    else:
        raise ValueError("listing %r has no end in the chapter text" % name)
    return "\n".join(out) + "\n"


def chapter_sources(chapter_path=None):
    """dict name -> restored source, for every name in LISTING_NAMES."""
    lines = _read_lines(chapter_path or default_chapter_path())
    return {name: restore_listing(lines, name) for name in LISTING_NAMES}


def chapter_namespace(chapter_path=None):
    """Exec the chapter's listings; return dict name -> class or function.

    All listings share one namespace, so the chapter's train_epoch calls the chapter's
    vae_loss.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    ns = {"torch": torch, "nn": nn, "F": F, "__name__": "vae_chapter"}
    for name, src in chapter_sources(chapter_path).items():
        exec(compile(src, "<chapter:%s>" % name, "exec"), ns)
    return {name: ns[name] for name in LISTING_NAMES}


def source_tokens(src):
    """Token stream of `src` as (type name, string) pairs, ignoring whitespace, comments
    and docstrings. INDENT/DEDENT are kept (with empty strings) so nesting counts."""
    docstrings = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                docstrings.add((first.lineno, first.col_offset))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    toks = []
    drop_newline = False
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in skip:
            continue
        if tok.type == tokenize.STRING and tok.start in docstrings:
            drop_newline = True
            continue
        if drop_newline and tok.type == tokenize.NEWLINE:
            drop_newline = False
            continue
        drop_newline = False
        text = "" if tok.type in (tokenize.INDENT, tokenize.DEDENT) else tok.string
        toks.append((tokenize.tok_name[tok.type], text))
    return toks


def chapter_tokens(name, chapter_path=None):
    """Tokens of the chapter's listing `name` (see source_tokens)."""
    lines = _read_lines(chapter_path or default_chapter_path())
    return source_tokens(restore_listing(lines, name))


def object_tokens(obj):
    """Tokens of a class or function defined in a module (e.g. vae_torch_ref's)."""
    return source_tokens(inspect.getsource(obj))
