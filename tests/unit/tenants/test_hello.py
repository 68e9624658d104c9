from pathlib import Path

from agent_image import Runtime
from tenants import hello


def test_greet_plain_and_loud(tmp_path: Path) -> None:
    runtime = Runtime(str(tmp_path / "hello.db"), hello)
    runtime.recover()
    try:
        assert runtime.start(hello.greet, ("  ada lovelace ",)).result(5) == "Hello, Ada Lovelace!"
        loud = runtime.start(hello.greet, ("ada",), {"loud": True})
        assert loud.result(5) == "HELLO, ADA!"
        assert [s.name for s in runtime.steps(loud.id)] == ["normalise", "compose", "shout"]
        assert runtime.start(hello.count, (10,)).result(5) == 45
    finally:
        runtime.close()


def test_bundle_runs_as_plain_functions_without_a_runtime() -> None:
    assert hello.greet("bob") == "Hello, Bob!"
