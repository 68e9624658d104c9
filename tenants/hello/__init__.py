"""The smallest useful bundle: a three-step greeting, and a counter for durability checks.

litefleet-agent serve --bundle tenants.hello --db /tmp/hello.db --port 8080
curl -XPOST localhost:8080/v1/workflows/greet -d '{"args": ["ada"]}'
"""

import time

from agent_image import step, workflow

__version__ = "1"


@step
def normalise(name: str) -> str:
    return name.strip().title()


@step
def compose(name: str) -> str:
    return f"Hello, {name}!"


@step
def shout(text: str) -> str:
    return text.upper()


@workflow
def greet(name: str, loud: bool = False) -> str:
    text = compose(normalise(name))
    return shout(text) if loud else text


@step
def record(n: int, pause: float = 0.0) -> int:
    time.sleep(pause)
    return n


@workflow
def count(n: int, pause: float = 0.0) -> int:
    """Checkpoint `n` steps, each taking `pause` seconds; the durability tests use it as a monotonic counter of
    committed work (and `pause` to be sure a kill lands mid-workflow)."""
    total = 0
    for i in range(n):
        total += record(i, pause)
    return total
