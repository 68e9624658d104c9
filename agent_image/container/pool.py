"""A pooled agent container (warm pool): started with no identity and no secrets (LITEFLEET_POOLED=1), it loads what
an agent start needs (the entrypoint's imports: runtime store, fence, Litestream helpers) and waits until the control
plane claims it for one NEW agent.

The claim comes through the secrets' channel: `python -m agent_image.container.pool claim` run by `docker exec` with
one JSON line on stdin, `Claim`: `{"version": 1, "env": {<the incarnation's ContainerEnv.to_env()>}, "secrets":
{<AgentSecrets>}}`. The writer checks the identity as `AgentIdentity.from_env` does (over the image's own
variables), refuses a restore or a follower (a pool container has an empty volume: claims serve only agents without
history), writes the secrets file (0400, on the tmpfs) and then the claim record `DATA_DIR/claim.json` (the identity
only, no secret; on the volume). The waiting entrypoint sees the record and goes on as a normal new agent.

The record is on the volume so that a restart of the claimed container (same container, emptied tmpfs) starts as
that incarnation at once and waits for its secrets like any restart. Claiming again with the same identity is
harmless (the secrets are written again, the record is unchanged); another identity is refused (exit 4).

Exit codes of `claim`: 0 written; 2 the claim is invalid (one line naming the field, never a value); 3 it could not
be written; 4 this container is already claimed by another incarnation.

The first claim of a pool container usually comes faster, on the container's own stdin: a pool container is created
with stdin open, and the control plane attaches to it through the engine (the same authenticated connection as
`docker exec`, without starting a process: ~0.05 s against ~0.35-0.75 s for an exec of Python on a busy node). The
waiting entrypoint reads the same `Claim` line there, checks and writes it exactly as `claim` does, and answers one
JSON line on stdout, `{"claim": <the exit code above>, "error": "..."}`; then it closes its stdin, so nothing
written there later reaches the agent. Only the engine's clients can write to a container's stdin. A repeated
delivery (a claim cut short, a restart) goes through `claim` by exec as before."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent_image import contract
from agent_image.container._files import Lines, poll_line, sync_directory
from agent_image.container.secrets_in import write_secrets
from agent_image.contract import AgentSecrets, IdentityError

CLAIM_FILE = "claim.json"
MAX_CLAIM_BYTES = 2 * contract.MAX_SECRETS_BYTES
# what a claim may set: the variables the control plane sets per incarnation, nothing the image sets
CLAIMABLE = frozenset(
    {
        contract.TENANT,
        contract.AGENT,
        contract.GENERATION,
        contract.BUNDLE,
        contract.REPLICA_URL,
        contract.S3_ENDPOINT,
        contract.S3_REGION,
        contract.SYNC_INTERVAL,
        contract.MONITOR_INTERVAL,
        contract.FENCE_INTERVAL,
        contract.LEASE_TIMEOUT,
        contract.DURABILITY,
        contract.DURABILITY_TIMEOUT,
    }
)


def pooled(env: Mapping[str, str]) -> bool:
    return env.get(contract.POOLED, "0") == "1"


@dataclass(frozen=True)
class Claim:
    env: dict[str, str]
    secrets: AgentSecrets
    version: int = 1

    def to_json(self) -> str:
        secrets = json.loads(self.secrets.to_json())
        return json.dumps({"version": self.version, "env": self.env, "secrets": secrets}, sort_keys=True)

    @classmethod
    def parse(cls, raw: str | bytes, image_env: Mapping[str, str]) -> Claim:
        """Validate a claim against the container's own environment. IdentityError names the field, never a value."""
        if len(raw) > MAX_CLAIM_BYTES:
            raise IdentityError(f"the claim is larger than {MAX_CLAIM_BYTES} bytes")
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise IdentityError("the claim is not JSON") from None
        if (
            not isinstance(document, dict)
            or document.get("version", 1) != 1
            or set(document)
            - {
                "version",
                "env",
                "secrets",
            }
        ):
            raise IdentityError("the claim must be a JSON object of version 1 with env and secrets")
        env, secrets = document.get("env"), document.get("secrets")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise IdentityError("claim field env must be an object of strings")
        unknown = set(env) - CLAIMABLE
        if unknown:  # a restore, a follower, or anything the image sets is no business of a claim
            raise IdentityError(f"claim env may not set: {', '.join(sorted(unknown))}")
        if not isinstance(secrets, dict):
            raise IdentityError("claim field secrets must be an object")
        parsed = AgentSecrets.parse(json.dumps(secrets))
        identity_env(image_env, env)  # raises IdentityError as the entrypoint would
        return cls(dict(env), parsed)


def identity_env(image_env: Mapping[str, str], claimed: Mapping[str, str]) -> dict[str, str]:
    """The environment the claimed agent runs with: the image's, without POOLED, plus the claim's. Checked."""
    from agent_image.container.identity import AgentIdentity

    env = {k: v for k, v in image_env.items() if k != contract.POOLED and k not in CLAIMABLE}
    env.update(claimed)
    AgentIdentity.from_env(env)
    return env


def claim_path(env: Mapping[str, str]) -> Path:
    return Path(env.get(contract.DATA_DIR, "/data")) / CLAIM_FILE


def wait_for_claim(
    env: Mapping[str, str],
    *,
    poll: float = 0.01,
    sleep: Callable[[float], None] = time.sleep,
    ready: Callable[[], None] = lambda: None,
    stdin: int | None = None,
    answer: Callable[[str], None] = lambda line: None,
) -> dict[str, str]:
    """Wait (without a bound: an unclaimed pool container idles) for the claim record; return the agent's env.
    With `stdin` (a file descriptor), a claim line arriving there is checked and written as `claim` does, and
    `answer` gets the outcome's JSON line (see the module docstring); at its end of file only the record is
    watched. A record that does not make a valid identity raises IdentityError (the entrypoint exits bad_identity)."""
    path = claim_path(env)
    lines = None if stdin is None else Lines(stdin, MAX_CLAIM_BYTES)
    ready()
    while not path.exists():
        lines, line = poll_line(lines, poll, sleep)
        if line is None:
            continue
        code, error = accept(line, env)
        answer(json.dumps({"claim": code, "error": error}))
    try:
        claimed = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"the claim record {path} cannot be read: {exc}") from None
    if not isinstance(claimed, dict):
        raise IdentityError(f"the claim record {path} is not an object")
    return identity_env(env, {str(k): str(v) for k, v in claimed.items()})


def accept(raw: bytes, env: Mapping[str, str]) -> tuple[int, str]:
    """Check and write one claim line: `claim`'s exit code and its one-line reason (a field or a path, never a
    value). Safe to repeat, as `claim` is."""
    try:
        write_claim(Claim.parse(raw, env), env)
    except IdentityError as exc:
        return 2, f"invalid: {exc}"
    except FileExistsError:
        return 4, "already_claimed: this container holds another incarnation"
    except OSError as exc:
        return 3, f"cannot write the claim: {exc.strerror or exc}"
    return 0, ""


def write_claim(claim: Claim, env: Mapping[str, str]) -> None:
    """Secrets first (the entrypoint reads them once it sees the record), then the record, atomically and synced.
    Raises FileExistsError when another identity holds the record."""
    path = claim_path(env)
    record = json.dumps(claim.env, sort_keys=True)
    if path.exists() and path.read_text() != record:
        raise FileExistsError(str(path))
    write_secrets(claim.secrets, Path(env.get(contract.SECRETS_FILE, contract.DEFAULT_SECRETS_FILE)))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w") as file:
        file.write(record)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    sync_directory(path.parent)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["claim"]:
        print("usage: python -m agent_image.container.pool claim", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if not pooled(env):
        print("pool: invalid: this container is not a pooled one", file=sys.stderr)
        return 2
    code, error = accept(sys.stdin.buffer.readline(MAX_CLAIM_BYTES + 1), env)
    if code:
        print(f"pool: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
