#!/usr/bin/env python3
"""No two files of one crate import each other in a circle (README, Layout).

For every crate, follow the `use crate::...`, `use super::...`,
`use self::...` and `use child::...` lines of each production file (test
modules and tests.rs files are skipped; `pub use` re-exports are a
module's facade, not its dependencies) to the module they name, and
report every cycle.
Exits non-zero when there is one."""
import os,re,sys
def modpath(root, f):
    rel=os.path.relpath(f, root)[:-3]
    parts=rel.split("/")
    if parts[-1] in ("lib","main"): parts=parts[:-1]
    elif parts[-1]=="mod": parts=parts[:-1]
    return tuple(parts)
total=0
for crate in ["vswitch","services","overlay","datapath","cnm","cli","ipam","bench"]:
    root=f"{crate}/src"
    files={}
    for dp,_,fs in os.walk(root):
        for f in fs:
            if f.endswith(".rs"): files[modpath(root,os.path.join(dp,f))]=os.path.join(dp,f)
    edges={m:set() for m in files}
    for m,f in files.items():
        src=open(f).read()
        # drop test modules
        src=re.split(r"\n#\[cfg\(test\)\]\nmod tests \{", src)[0]
        if f.endswith("tests.rs"): continue
        for u in re.findall(r"(?m)^\s*use ([a-z_][a-z0-9_]*::[^;]*);", src):
            path=u.split("::")
            if path[0] not in ("crate","super","self"):
                # `use child::Item` names a child module of this one.
                if m+(path[0],) not in files: continue
                path=["self"]+path
            if path[0]=="crate": base=[]; rest=path[1:]
            elif path[0]=="super":
                base=list(m[:-1]) if not f.endswith(("mod.rs","lib.rs")) else list(m[:-1])
                rest=path[1:]
                while rest and rest[0]=="super": base=base[:-1]; rest=rest[1:]
            else: base=list(m); rest=path[1:]
            # longest prefix that's a module
            cand=base[:]
            best=tuple(base)
            for r in rest:
                r=r.strip("{} ")
                if tuple(cand+[r]) in files: cand.append(r); best=tuple(cand)
                else: break
            if best!=m and best in files: edges[m].add(best)
    # find cycles via DFS
    color={}
    cyc=[]
    def dfs(u,stack):
        color[u]=1; stack.append(u)
        for v in edges[u]:
            if color.get(v)==1: cyc.append(stack[stack.index(v):]+[v])
            elif not color.get(v): dfs(v,stack)
        stack.pop(); color[u]=2
    for u in files:
        if not color.get(u): dfs(u,[])
    for c in cyc: print(crate, " -> ".join("::".join(x) or "lib" for x in c)); total+=1
print("import cycles:", total)
sys.exit(1 if total else 0)
