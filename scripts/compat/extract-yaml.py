#!/usr/bin/env python3
"""Every YAML code block of the user guide that has a `kind:` -> ug-yaml/<file>_<line>.yaml, index in ug-yaml/INDEX"""
import re, pathlib
out = pathlib.Path("ug-yaml"); out.mkdir(exist_ok=True)
idx = []
for p in sorted(pathlib.Path("ug").rglob("*.md")):
    lines = p.read_text(errors="replace").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```\s*(\w*)", lines[i])
        if m:
            start = i; body = []; i += 1
            while i < len(lines) and not re.match(r"^\s*```", lines[i]):
                body.append(lines[i]); i += 1
            text = "\n".join(body)
            if re.search(r"^\s*kind:\s*\w+", text, re.M) and re.search(r"^\s*apiVersion:", text, re.M):
                # dedent
                ind = min((len(l) - len(l.lstrip()) for l in body if l.strip()), default=0)
                text = "\n".join(l[ind:] for l in body) + "\n"
                name = f"{str(p.relative_to('ug')).replace('/', '_')[:-3]}_{start+1}.yaml"
                (out / name).write_text(text)
                kinds = re.findall(r"^kind:\s*(\w+)", text, re.M)
                names = re.findall(r"^  name:\s*(\S+)", text, re.M)
                idx.append(f"{name}\t{','.join(kinds)}\t{','.join(names)}")
        i += 1
(out / "INDEX").write_text("\n".join(idx) + "\n")
print(len(idx))
