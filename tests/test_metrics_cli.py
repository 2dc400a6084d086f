"""`recbuild metrics [--diff]` over artifacts that write metrics.json."""

from __future__ import annotations


def test_metrics_and_diff(project):
    project.recipe("""
        version: 1
        vars: {r: 0.25}
        artifacts:
          recall:
            kind: command
            params: {r: "${vars.r}"}
            cmd: "echo '{\\"recall@10\\": ${params.r}, \\"count\\": 7}' > ${out}/metrics.json"
    """)
    assert project.run("make").code == 0
    table = project.run("metrics")
    assert "recall@10" in table.out and "0.2500" in table.out
    assert project.run("make", "--set", "vars.r=0.5").built == ["recall"]
    diff = project.run("metrics", "--diff")
    line = next(l for l in diff.out.splitlines() if "recall@10" in l)
    assert line.split()[2:] == ["0.5000", "0.2500", "+0.2500"]
