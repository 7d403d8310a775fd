#!/usr/bin/env python3
"""Extract virtctl/kubectl command lines from the user guide's markdown code blocks.
Writes commands-all.tsv: id, file:line, command (continuations joined)."""
import re, pathlib
root = pathlib.Path("ug")
out = []
for p in sorted(root.rglob("*.md")):
    lines = p.read_text(errors="replace").splitlines()
    inblock = False
    i = 0
    while i < len(lines):
        ln = lines[i]
        if re.match(r"^\s*(```|~~~)", ln):
            inblock = not inblock; i += 1; continue
        if inblock:
            m = re.match(r"^\s*(?:\$|#|>)?\s*((?:virtctl|kubectl)\s.*)$", ln)
            if m:
                cmd = m.group(1).rstrip(); start = i
                while cmd.endswith("\\") and i + 1 < len(lines):
                    i += 1; cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
                body = None
                h = re.search(r"<<\s*'?(\w+)'?", cmd)
                if h:
                    body = []
                    while i + 1 < len(lines) and lines[i+1].strip() != h.group(1):
                        i += 1; body.append(lines[i])
                    i += 1
                out.append((f"{p.relative_to(root)}:{start+1}", cmd, body))
        i += 1
with open("commands-all.tsv", "w") as f:
    pathlib.Path("heredocs").mkdir(exist_ok=True)
    for n, (loc, cmd, body) in enumerate(out, 1):
        f.write(f"{n}\t{loc}\t{cmd}\n")
        if body is not None:
            pathlib.Path(f"heredocs/{n}.yaml").write_text("\n".join(body) + "\n")
print(len(out))
