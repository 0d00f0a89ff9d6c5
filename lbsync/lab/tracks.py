"""Where the lab's stack runs: the local cluster (supervisord) or a compose project (s6).

Both tracks answer the same questions (the process list, each program's log, Serf's
member table, haproxy.cfg, the registry, the Runtime API and master CLI addresses, the
stats page), so the collectors in collect.py never ask which track they are on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .. import __version__, self_command
from ..cluster.addresses import HTTP_PORT, RUNTIME_PORT, SERF_RPC_PORT, STATS_PORT
from ..cluster.local import ENV_FILE, Layout, Supervisor, default_dir, read_state
from ..haproxy.master import MasterCLI
from ..settings import env_of
from .spec import LabError

_TIMEOUT = 60.0
# Inside the lb container (docker-compose.yml and images/lb): where task 3's watcher writes.
DOCKER_HANDLER_DIR = "/tmp/lab-handler"


@dataclass(frozen=True)
class Run:
    """A command a collector ran, as the student would have typed it, and its result."""

    argv: list[str]
    code: int
    out: str  # stdout and stderr together

    def transcript(self) -> str:
        return f"$ {' '.join(self.argv)}\n{self.out}" + ("" if self.out.endswith("\n") else "\n") \
            + f"(exit code {self.code})\n"


def run(argv: list[str], *, env: dict[str, str] | None = None,
        timeout: float = _TIMEOUT) -> Run:
    """Run a command to its end; when this process is stopped meanwhile (Ctrl-C, or
    SIGTERM through lbsync.stop_on_sigterm), the command gets SIGTERM and up to STOP_GRACE_S
    to clean up (the benchmark stops its own HAProxy, Serf and Crossbar processes) before
    SIGKILL, so no stack outlives the collection."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} not found") from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise LabError(f"{' '.join(argv)} did not finish in {timeout:g}s") from None
    except BaseException:
        _stop(proc)
        raise
    return Run(argv, proc.returncode, out)


STOP_GRACE_S = 30.0


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def must(r: Run, what: str) -> str:
    if r.code != 0:
        last = r.out.strip().splitlines()[-1:] or ["no output"]
        raise LabError(f"{what}: `{' '.join(r.argv)}` exited {r.code}: {last[0]}")
    return r.out


class Track(Protocol):
    name: str  # "local" or "docker"
    runtime: str  # HOST:PORT of the Runtime API (what users `nc` to)
    stats_url: str
    frontend_url: str  # http://HOST:PORT

    def describe(self) -> dict[str, object]: ...
    def processes(self) -> tuple[str, dict[str, int]]: ...
    def logs(self) -> dict[str, str]: ...
    def inspect(self) -> dict[str, str]: ...
    def serf_members(self) -> Run: ...
    def serf_log(self) -> str: ...
    def haproxy_config(self) -> str: ...
    def registry(self) -> dict[str, str]: ...
    def handler_registry(self, workdir: Path) -> dict[str, str]: ...
    def show_proc(self) -> str: ...
    def status(self, check: bool) -> Run: ...


def _read_dir(folder: Path) -> dict[str, str]:
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json")
    except OSError:
        return {}
    files = {}
    for name in names:
        try:
            files[name] = (folder / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # removed while we read: it is not there any more
    return files


# --- the local cluster ---------------------------------------------------------------


def _venv_binary(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


@dataclass
class LocalTrack:
    """`lbsync up`: supervisord, HAProxy, Serf and Crossbar processes on loopback."""

    layout: Layout
    name: str = "local"
    runtime: str = field(init=False)
    stats_url: str = field(init=False)
    frontend_url: str = field(init=False)

    def __post_init__(self) -> None:
        ip = self.layout.lb_ip
        self.runtime, self.stats_url = f"{ip}:{RUNTIME_PORT}", f"http://{ip}:{STATS_PORT}/"
        self.frontend_url = f"http://{ip}:{HTTP_PORT}"

    @classmethod
    def find(cls, cluster_dir: Path | None) -> LocalTrack | None:
        path = cluster_dir or default_dir()
        try:
            net = int(read_state(Layout(path)).get("net", 0))
        except Exception:  # noqa: BLE001  (no cluster there, whatever the reason)
            return None
        layout = Layout(path.resolve(), net)
        return cls(layout) if Supervisor(layout).running() else None

    def describe(self) -> dict[str, object]:
        return {"cluster_dir": str(self.layout.dir), "net": self.layout.net,
                "nodes": read_state(self.layout).get("nodes", [])}

    def processes(self) -> tuple[str, dict[str, int]]:
        text = run([_venv_binary("supervisorctl"), "-c", str(self.layout.conf), "status"])
        try:
            infos = Supervisor(self.layout).rpc().supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error) as e:
            raise LabError(f"supervisord does not answer on {self.layout.sock}: {e}") from None
        pids = {f"{p['group']}:{p['name']}": int(p["pid"]) for p in infos}
        return text.transcript(), pids

    def logs(self) -> dict[str, str]:
        logs = {}
        for path in sorted((self.layout.dir / "logs").glob("*.log")):
            logs[path.name] = path.read_text(encoding="utf-8", errors="replace")
        return logs

    def inspect(self) -> dict[str, str]:
        return {}

    def serf_members(self) -> Run:
        argv = ["serf", "members", "-rpc-addr", f"{self.layout.lb_ip}:{SERF_RPC_PORT}"]
        token = self.layout.serf_auth_key()
        if token is None:  # a cluster an lbsync before RPC auth started
            return run(argv)
        # The token goes in Serf's own variable: the transcript, which lands in the
        # student's report folder, shows where it came from, never the token itself.
        r = run(argv, env={**os.environ, "SERF_RPC_AUTH": token})
        return Run([*argv, "-rpc-auth", f'"$(cat {self.layout.serf_token})"'], r.code, r.out)

    def serf_log(self) -> str:
        return (self.layout.dir / "logs" / "lb-serf.log").read_text(errors="replace")

    def haproxy_config(self) -> str:
        return Path(self.layout.lb["config"]).read_text(encoding="utf-8")

    def registry(self) -> dict[str, str]:
        return _read_dir(Path(self.layout.lb["registry"]))

    def handler_registry(self, workdir: Path) -> dict[str, str]:
        return _read_dir(workdir / "work" / "handler")

    def show_proc(self) -> str:
        return MasterCLI(self.layout.lb["master_socket"]).show_proc()

    def status(self, check: bool) -> Run:
        env = {**os.environ, **env_of({"cluster_dir": str(self.layout.dir)})}
        if not (self.layout.dir / ENV_FILE).exists():
            raise LabError(f"{self.layout.dir / ENV_FILE} is missing: is the cluster up?")
        args = ["status", *(["--check"] if check else [])]
        r = run([*self_command(), *args], env=env)
        return Run(["lbsync", *args], r.code, r.out)


# --- a compose project -----------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    id: str
    name: str  # e.g. lb-1, node-3: service and container number
    service: str
    running: bool


def _docker(*args: str, timeout: float = _TIMEOUT) -> Run:
    return run(["docker", *args], timeout=timeout)


@dataclass
class DockerTrack:
    """`docker-compose up --scale node=N`: s6 in every container."""

    project: str
    name: str = "docker"
    runtime: str = field(init=False)
    stats_url: str = field(init=False)
    frontend_url: str = field(init=False)

    def __post_init__(self) -> None:
        lb = self.lb().id
        self.runtime = self._published(lb, 9999)
        self.stats_url = f"http://{self._published(lb, 1936)}/"
        self.frontend_url = f"http://{self._published(lb, 8080)}"

    @staticmethod
    def projects() -> list[str]:
        """Compose projects with a running lb service built from lbsync's image."""
        if shutil.which("docker") is None:
            return []
        try:
            r = _docker("ps", "--filter", "label=com.docker.compose.service=lb", "--format",
                        '{{.Label "com.docker.compose.project"}} {{.Image}}', timeout=15)
        except LabError:
            return []
        if r.code != 0:
            return []
        found = {line.split()[0] for line in r.out.splitlines()
                 if len(line.split()) == 2 and "lbsync" in line.split()[1]}
        return sorted(found)

    def containers(self) -> list[Container]:
        label = f"label=com.docker.compose.project={self.project}"
        fmt = ('{{.ID}} {{.Label "com.docker.compose.service"}} '
               '{{.Label "com.docker.compose.container-number"}} {{.State}}')
        out = must(_docker("ps", "-a", "--filter", label, "--format", fmt), "docker ps")
        found = []
        for line in out.splitlines():
            cid, service, number, state = (line.split() + ["", "", "", ""])[:4]
            found.append(Container(cid, f"{service}-{number}", service, state == "running"))
        # The lb first, then the nodes by container number.
        return sorted(found, key=lambda c: (c.service != "lb", c.service,
                                            int(c.name.rpartition("-")[2] or 0)))

    def lb(self) -> Container:
        for c in self.containers():
            if c.service == "lb" and c.running:
                return c
        raise LabError(f"compose project {self.project}: no running lb container")

    @staticmethod
    def _published(cid: str, port: int) -> str:
        out = must(_docker("port", cid, f"{port}/tcp"), f"the lb's port {port}")
        first = out.split()[0]  # 127.0.0.1:8080
        return first.replace("0.0.0.0:", "127.0.0.1:")

    def _exec(self, *cmd: str, cid: str | None = None) -> Run:
        return _docker("exec", cid or self.lb().id, *cmd)

    def describe(self) -> dict[str, object]:
        version = _docker("version", "--format", "{{.Server.Version}}").out.strip()
        return {"compose_project": self.project, "docker": version,
                "containers": [c.name for c in self.containers()]}

    def processes(self) -> tuple[str, dict[str, int]]:
        ps = _docker("ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}")
        parts = [ps.transcript()]
        pids: dict[str, int] = {}
        for c in self.containers():
            if not c.running:
                continue
            svstat = self._exec("sh", "-c", 'for s in /etc/s6/*/*/; do '
                                'echo "$(basename "$s"): $(s6-svstat "$s")"; done', cid=c.id)
            parts.append(f"# {c.name} ({c.id}): s6 services\n{svstat.transcript()}")
            for line in svstat.out.splitlines():
                service, _, state = line.partition(": ")
                words = state.replace("(", " ").replace(")", " ").split()
                if "pid" in words and words.index("pid") + 1 < len(words):
                    pids[f"{c.name}:{service}"] = int(words[words.index("pid") + 1])
            parts.append(f"# {c.name}: docker top\n{_docker('top', c.id).transcript()}")
        return "\n".join(parts), pids

    def logs(self) -> dict[str, str]:
        return {f"{c.name}.log": _docker("logs", "--timestamps", c.id).out
                for c in self.containers()}

    def inspect(self) -> dict[str, str]:
        return {f"{c.name}.json": must(_docker("inspect", c.id), f"docker inspect {c.name}")
                for c in self.containers()}

    def serf_members(self) -> Run:
        r = self._exec("serf", "members")
        return Run(["docker", "exec", self.lb().name, "serf", "members"], r.code, r.out)

    def serf_log(self) -> str:
        log = _docker("logs", "--timestamps", self.lb().id).out
        return "".join(line + "\n" for line in log.splitlines()
                       if "serf" in line.lower() or "memberlist" in line.lower())

    def haproxy_config(self) -> str:
        return must(self._exec("sh", "-c", 'cat "$LBSYNC_HAPROXY_CONFIG"'), "haproxy.cfg")

    def _read_dir(self, folder_expr: str) -> dict[str, str]:
        code = ("import json, os, sys\n"
                "d = os.path.expandvars(sys.argv[1])\n"
                "names = sorted(n for n in os.listdir(d) if n.endswith('.json')) "
                "if os.path.isdir(d) else []\n"
                "print(json.dumps({n: open(os.path.join(d, n)).read() for n in names}))")
        out = must(self._exec("python3", "-c", code, folder_expr), f"reading {folder_expr}")
        data = json.loads(out)
        return {str(k): str(v) for k, v in data.items()}

    def registry(self) -> dict[str, str]:
        return self._read_dir("$LBSYNC_REGISTRY_DIR")

    def handler_registry(self, workdir: Path) -> dict[str, str]:
        return self._read_dir(DOCKER_HANDLER_DIR)

    def show_proc(self) -> str:
        return must(self._exec("sh", "-c", 'echo "show proc" | nc -U -w 3 '
                               '"$LBSYNC_MASTER_SOCKET"'), "the master CLI")

    def status(self, check: bool) -> Run:
        r = self._exec("lbsync", "status", *(["--check"] if check else []))
        return Run(["docker", "exec", self.lb().name, "lbsync", "status",
                    *(["--check"] if check else [])], r.code, r.out)


def find_track(mode: str | None, cluster_dir: Path | None,
               project: str | None) -> LocalTrack | DockerTrack:
    """The running stack, or one LabError line saying what runs and what to pass."""
    local = LocalTrack.find(cluster_dir) if mode in (None, "local") else None
    projects = ([project] if project else DockerTrack.projects()) if mode in (None,
                                                                             "docker") else []
    if mode == "local" and local is None:
        raise LabError(f"no local cluster runs in {cluster_dir or default_dir()} "
                       "(start one with `lbsync up --nodes 2`)")
    if mode == "docker" and not projects:
        raise LabError("no compose project with an lbsync lb container runs "
                       "(start one with `docker-compose up -d --scale node=2`)")
    if mode is None:
        if local is None and not projects:
            raise LabError("no lbsync stack runs: start the local cluster (`lbsync up "
                           "--nodes 2`) or the compose stack (`docker-compose up -d --scale "
                           "node=2`)")
        if local is not None and projects:
            raise LabError(f"both a local cluster ({local.layout.dir}) and a compose project "
                           f"({', '.join(projects)}) run: choose with --mode local|docker")
    if local is not None:
        return local
    if len(projects) > 1:
        raise LabError(f"several compose projects run ({', '.join(projects)}): choose one "
                       "with --project")
    return DockerTrack(projects[0])


def versions(track: LocalTrack | DockerTrack, haproxy: str) -> dict[str, str]:
    serf = (track._exec("serf", "version").out if isinstance(track, DockerTrack)
            else run(["serf", "version"]).out)
    return {"lbsync": __version__, "python": sys.version.split()[0],
            "haproxy": haproxy, "serf": (serf.splitlines() or ["?"])[0]}
