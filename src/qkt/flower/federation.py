"""A Flower federation on this machine: a real SuperLink, real SuperNodes, and ``flwr run``.

``qkt flower simulate`` starts a SuperLink with Flower's simulation runtime (Ray);
the loopback tests start a SuperLink and one SuperNode process per party, as a
deployment across machines would, only on 127.0.0.1. Every process is started in
its own session and stopped, with its children, when the federation is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import tomli_w
import yaml

from ..config import RunConfig
from ..errors import QKTError
from ..experiment import load_scenario
from .party import QUERIER_ENV, SHARED_SECTIONS

APP_DIR = Path(__file__).resolve().parent / "app"
CONNECTION = "qkt-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent_pid(pid: int) -> int:
    """The parent of process ``pid``, from /proc (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Flower's SuperExec starts its own session, so process groups miss them)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = parent_pid(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # ended while we looked
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class LocalFederation:
    """A SuperLink on 127.0.0.1 (simulation runtime or deployment), its SuperNodes, and runs of the qkt app.

    Parameters
    ----------
    workdir:
        Folder for Flower's home (``FLWR_HOME``), the logs of every process and run configs.
    simulation:
        Start the SuperLink with Flower's simulation runtime (virtual SuperNodes on Ray)
        instead of waiting for SuperNode processes.
    secure:
        Run as a real federation should: TLS on every connection (a throw-away CA and
        a certificate for 127.0.0.1, made with ``openssl``) and SuperNode
        authentication (each SuperNode gets an ECDSA key, made with ``ssh-keygen``, and
        is registered with ``flwr supernode register`` before it starts).
    """

    def __init__(self, workdir: Path, simulation: bool = False, secure: bool = False):
        self.workdir = Path(workdir).resolve()
        self.simulation = simulation
        self.secure = secure
        self.credentials = self.workdir / "credentials"
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        # Flower's commands must be those installed beside this interpreter: they import qkt's app from it,
        # and another flwr first on PATH (an unactivated virtual environment) would not find qkt.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env = {**os.environ, "PATH": path, "FLWR_HOME": str(self.workdir / "flwr-home"), "FLWR_DISABLE_UPDATE_CHECK": "1"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:  # a SuperLink that started before a timeout or Ctrl-C would outlive us: __exit__ will not run
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def querier_file(self) -> Path:
        """The querier's own settings for the next run, read by the ServerApp the SuperLink starts (``$QKT_QUERIER_CONFIG``)."""
        return self.workdir / "querier.yaml"

    def spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        """Start a process in its own session (so it is stopped with its children), logging to ``<name>.log``."""
        with open(self.workdir / f"{name}.log", "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**self.env, **env}, start_new_session=True)
        self.processes[name] = process
        return process

    def _issue(self, *commands: list[str]) -> None:
        for command in commands:
            done = subprocess.run(command, cwd=self.credentials, capture_output=True, text=True)
            if done.returncode:
                raise QKTError(f"could not make credentials ({' '.join(command[:2])}): {done.stderr.strip()}")

    def _issue_tls(self) -> list[str]:
        """A CA and a SuperLink certificate valid for 127.0.0.1; the SuperLink's TLS options."""
        self.credentials.mkdir(parents=True, exist_ok=True)
        (self.credentials / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self._issue(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=qkt-ca"],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=superlink"],
            ["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext"],
        )
        c = self.credentials
        return ["--ssl-certfile", str(c / "server.crt"), "--ssl-keyfile", str(c / "server.key"), "--ssl-ca-certfile", str(c / "ca.crt"),
                "--enable-supernode-auth"]

    def supernode_key(self, name: str, register: bool = True) -> Path:
        """A SuperNode's private key (its public key registered with the SuperLink unless ``register`` is False)."""
        key = self.credentials / name
        self._issue(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", name])
        if register:
            done = subprocess.run(["flwr", "supernode", "register", str(key.with_suffix(".pub")), CONNECTION],
                                  env=self.env, capture_output=True, text=True, timeout=60)
            if done.returncode:
                raise QKTError(f"flwr supernode register failed: {done.stdout}{done.stderr}")
        return key

    def start(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until it accepts connections."""
        (self.workdir / "flwr-home").mkdir(parents=True, exist_ok=True)
        security = self._issue_tls() if self.secure else ["--insecure"]
        reach = {"root-certificates": str(self.credentials / "ca.crt")} if self.secure else {"insecure": True}
        connection = {"superlink": {"default": CONNECTION, CONNECTION: {"address": self.address, **reach}}}
        (self.workdir / "flwr-home" / "config.toml").write_text(tomli_w.dumps(connection))
        # No internet here and qkt is already installed: never let Flower `uv sync` an app's dependencies.
        args = ["flower-superlink", *security, "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        process = self.spawn("superlink", args + (["--simulation"] if self.simulation else []), **{QUERIER_ENV: str(self.querier_file)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise QKTError(f"flower-superlink exited with code {process.returncode}:\n{_tail(self.workdir / 'superlink.log')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise QKTError(f"flower-superlink did not listen on {self.address} within {timeout:g} s")

    def add_supernode(self, partition_id: int, num_partitions: int, registered: bool = True, **node_config: str) -> subprocess.Popen:
        """Start a SuperNode process playing party ``partition_id`` (extra ``node_config`` such as ``qkt_fault="nan"``).

        In a secure federation, ``registered=False`` starts it with a key the SuperLink does not know.
        """
        name = f"supernode{partition_id}" + ("" if registered else "-unregistered")
        options = {"partition-id": partition_id, "num-partitions": num_partitions,
                   **{k.replace("_", "-"): f'"{v}"' for k, v in node_config.items()}}
        security = ["--insecure"]
        if self.secure:
            security = ["--root-certificates", str(self.credentials / "ca.crt"), "--max-retries", "3",
                        "--auth-supernode-private-key", str(self.supernode_key(name, registered))]
        args = ["flower-supernode", *security, "--superlink", self.address, "--port", str(free_port()),
                "--node-config", " ".join(f"{k}={v}" for k, v in options.items())]
        return self.spawn(name, args)

    def run(self, run_config: Mapping[str, object], querier: Mapping[str, object], timeout: float,
            num_supernodes: int | None = None) -> str:
        """``flwr run`` the qkt app with ``run_config`` (every party's) and ``querier`` (the ServerApp's own); return the streamed log."""
        self.querier_file.write_text(yaml.safe_dump(dict(querier), sort_keys=False))
        path = self.workdir / "run.toml"
        path.write_text(tomli_w.dumps(dict(run_config), multiline_strings=True))
        args = ["flwr", "run", str(APP_DIR), CONNECTION, "--run-config", str(path), "--stream"]
        if num_supernodes is not None:
            args += ["--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1"]
        try:
            done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.workdir)
        except subprocess.TimeoutExpired as exc:
            raise QKTError(f"the Flower run did not finish within {timeout:g} s; logs are in {self.workdir}") from exc
        (self.workdir / "flwr-run.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            raise QKTError(f"flwr run failed (exit {done.returncode}):\n{_tail(self.workdir / 'flwr-run.log')}")
        return done.stdout + done.stderr

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process started here and everything they started: politely, then by force."""
        family = {pid for p in self.processes.values() for pid in (p.pid, *descendants(p.pid))}
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes.values():
            process.wait()
        self.processes.clear()

def run_config(config: RunConfig, **options: object) -> dict[str, object]:
    """The Flower run config, which every party receives: the world they share (``qkt-config``) and app options (``reply_timeout=…``)."""
    world = {k: v for k, v in config.model_dump(exclude_defaults=True).items() if k in SHARED_SECTIONS}
    return {"qkt-config": yaml.safe_dump(world, sort_keys=False), **{k.replace("_", "-"): v for k, v in options.items()}}


def querier_settings(config: RunConfig, output: Path) -> dict[str, object]:
    """What only the querier's ServerApp reads (``$QKT_QUERIER_CONFIG``): its query settings, its methods and its output folder."""
    return {"query": config.query.model_dump(exclude_defaults=True), "methods": list(config.methods),
            "output-dir": str(Path(output).resolve())}


def read_results(output: Path) -> dict:
    """The querier's ``results.json``, or the reason it could not write one."""
    if (output / "error.txt").exists():
        raise QKTError(f"the query failed at the querier: {(output / 'error.txt').read_text().strip()}")
    if not (output / "results.json").exists():
        raise QKTError(f"the Flower run wrote no results in {output}; see the logs beside it")
    return json.loads((output / "results.json").read_text())


def simulate(config: RunConfig, output: Path, timeout: float = 3600.0, **options: object) -> dict:
    """One run of the qkt app in Flower's simulation runtime, one virtual SuperNode per party; return its results.

    Flower's logs are kept in ``output/flower-logs``.
    """
    load_scenario(config)  # a data set or partition that cannot work fails here, before Flower and Ray start
    output = Path(output).resolve()
    for stale in ("results.json", "error.txt"):
        (output / stale).unlink(missing_ok=True)
    logs = output / "flower-logs"
    logs.mkdir(parents=True, exist_ok=True)
    with LocalFederation(logs, simulation=True) as federation:
        federation.run(run_config(config, **options), querier_settings(config, output), timeout,
                       num_supernodes=config.partition.num_parties)
    return read_results(output)
