#!/usr/bin/env python3
"""Rewrite the two non-C++ constructs of a CUDA source file so that it compiles
as plain C++ with csrc/sim/cudasim.h force-included (CMake runs it once per
csrc/kernels/*.cu for gpunet._C_sim).  Everything else is left as is, and
line numbers are preserved (compiler errors, gdb and ASan point at the .cu).

  kernel<<<grid, block, smem, stream>>>(args)
      ->  ::cudasim::launch_cfg(grid, block, smem, stream)
              .kernel([&](auto&... a) { kernel(a...); }, "kernel")(args)
  extern __shared__ T name[];
      ->  T* name = ::cudasim::dynamic_smem<T>();
  __shared__ T a[N], b[M];            (a static declaration starting a line)
      ->  __shared__ T a[N], b[M]; ::cudasim::note_shared(&a, sizeof(a)); ...
          (tells the race checker where the variable lives; a no-op elsewhere)

The kernel is called from a generic lambda, not passed as a function pointer,
so that a template kernel's arguments are deduced from the launch arguments
as nvcc deduces them (`k<<<g, b>>>(x, n)` with `template <class T> k(T*, int)`).
The kernel expression is the name before `<<<`: optionally `::`-qualified,
with optional template arguments (`ns::k<float, 4>`).

usage: cu2cpp.py IN.cu OUT.cpp
"""
import re
import sys

LAUNCH = re.compile(r"<<<(.*?)>>>", re.S)
DYN_SMEM = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\w+\s*\)\s*)?"  # optional __align__(n)
    r"(?P<type>[A-Za-z_][\w:<>,\s\*]*?)\s*"                     # element type
    r"(?:__align__\s*\(\s*\w+\s*\)\s*)?"
    r"(?P<name>\w+)\s*\[\s*\]\s*;")


STATIC_SMEM = re.compile(r"^(?P<decl>[ \t]*__shared__\s+[^;\n]*;)", re.M)


def _declared_names(decl: str):
    """The variable names of `__shared__ T a[N], b[M];` (a name is the last
    identifier before its first '[' or '=', or at its end)."""
    body = decl.strip()[len("__shared__"):].rstrip(";")
    parts, depth, start = [], 0, 0
    for i, c in enumerate(body):
        depth += c in "[(<{"
        depth -= c in "])>}"
        if c == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    names = []
    for part in parts:
        head = re.split(r"[\[=]", part, maxsplit=1)[0]
        ids = re.findall(r"[A-Za-z_]\w*", head)
        if ids:
            names.append(ids[-1])
    return names


def _note_static_smem(m) -> str:
    notes = "".join(f" ::cudasim::note_shared(&{n}, sizeof({n}));" for n in _declared_names(m.group("decl")))
    return m.group("decl") + notes


def _skip_space_back(src: str, i: int) -> int:
    while i > 0 and src[i - 1].isspace():
        i -= 1
    return i


def _is_ident(c: str) -> bool:
    return c.isalnum() or c == "_"


def kernel_start(src: str, end: int):
    """Start index of the kernel expression that ends at src[end] (where `<<<`
    begins), or None when there is none (e.g. `<<<` in a comment)."""
    i = end
    while True:
        i = _skip_space_back(src, i)
        if i > 0 and src[i - 1] == ">":  # template arguments: back to the matching '<'
            depth = 0
            while i > 0:
                i -= 1
                depth += {">": 1, "<": -1}.get(src[i], 0)
                if depth == 0:
                    break
            if depth != 0:
                return None
            i = _skip_space_back(src, i)
        j = i
        while j > 0 and _is_ident(src[j - 1]):
            j -= 1
        if j == i:
            return None
        k = _skip_space_back(src, j)
        if src[max(k - 2, 0):k] != "::":
            return j
        k -= 2
        before = _skip_space_back(src, k)
        if before == 0 or not (_is_ident(src[before - 1]) or src[before - 1] == ">"):
            return k  # a leading global `::`
        i = k


# Plain text substitution: a `<<<` inside a comment or string is rewritten
# too, which is harmless (the kernels never print launch syntax).
def rewrite(src: str) -> str:
    for m in reversed(list(LAUNCH.finditer(src))):
        start = kernel_start(src, m.start())
        if start is None:
            continue  # not a launch; a real one would then fail to compile
        kernel = src[start:m.start()]
        name = " ".join(kernel.split())
        src = (src[:start] + "::cudasim::launch_cfg(" + m.group(1) + ")"
               + ".kernel([&](auto&... cudasim_args) { " + kernel + "(cudasim_args...); }, \"" + name + "\")"
               + src[m.end():])
    src = DYN_SMEM.sub(lambda m: f"{m.group('type').strip()}* {m.group('name')} = "
                                 f"::cudasim::dynamic_smem<{m.group('type').strip()}>();", src)
    return STATIC_SMEM.sub(_note_static_smem, src)


def main():
    inp, out = sys.argv[1], sys.argv[2]
    with open(inp) as f:
        src = f.read()
    res = rewrite(src)
    if res.count("\n") != src.count("\n"):
        sys.exit(f"cu2cpp: rewriting {inp} changed its line structure")
    with open(out, "w") as f:
        f.write(f'#line 1 "{inp}"\n')
        f.write(res)


if __name__ == "__main__":
    main()
