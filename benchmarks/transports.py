"""bastion's transports beside the raw tools they are built on, measured in the same run.

Run with ``.venv/bin/python benchmarks/transports.py [--quick]``. Each figure is the median
of several repeats and is printed beside its baseline, as a ratio. Workers over TCP and
shared memory run in child processes (``bastion.spawn``); the baselines run between two
processes too. Benchmarks are not tests: nothing here asserts on time.

1. small op ``x + y`` (2 elements) over memory, tcp and shm, against a raw TCP ping-pong
   (blocking sockets, TCP_NODELAY) between two processes. Target: tcp within 3x of raw.
2. send + get of a 256 MiB float32 tensor over tcp, against raw ``sendall``/``recv_into``
   echoed by another process; over shm (and memory) against ``tensor.clone()``.
   Targets: tcp at least 70% of raw sockets' throughput; shm at least 3x tcp's.
3. the seed flow (send two tensors, add them, move the sum to a second worker, get it)
   on memory, tcp and shm.
4. torch.distributed (gloo, loopback): the same small round trip and 256 MiB each way,
   as the tool a PyTorch user would reach for instead.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import queue as queues
import secrets
import socket
import struct
from typing import Any

import torch
from harness import median_seconds, row

import bastion as sy

_HEADER = struct.Struct("!Q")  # the raw baseline's frame: 8-byte length, then the bytes
_FRESH = 1 << 63  # in the length: receive into a fresh torch.empty buffer, as bastion does
_SMALL_MESSAGE = 128  # bytes: about what a small bastion request frame weighs
_MiB = 2**20


# ----------------------------------------------------------------------------- helpers


def _rate_row(name: str, rate: float, baseline_name: str, baseline: float) -> None:
    """A throughput (bytes per second) beside its baseline's."""
    print(
        f"  {name:<38} {rate / 1e9:9.2f} GB/s   vs {baseline_name:<22} "
        f"{baseline / 1e9:9.2f} GB/s   ratio {rate / baseline:6.2f}"
    )


def _verdict(what: str, value: float, target: str, met: bool) -> None:
    print(f"  -> {what}: {value:.2f} (target {target}: {'met' if met else 'MISSED'})")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got, size = 0, view.nbytes
    while got < size:
        n = sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
        if n == 0:
            raise ConnectionError("the peer closed the connection")
        got += n


def _send_frame(sock: socket.socket, header: bytes, view: memoryview) -> None:
    if view.nbytes <= 1 << 16:
        sock.sendall(header + view)  # one segment for small messages
    else:
        sock.sendall(header)
        sock.sendall(view)


def _stop(process: multiprocessing.process.BaseProcess, timeout: float = 10.0) -> None:
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()


# ------------------------------------------------------------------ raw socket baseline


def _fresh_buffer(size: int) -> memoryview:
    return memoryview(torch.empty(size, dtype=torch.uint8).numpy())  # not faulted in yet


def _echo_child(port: int) -> None:
    """Child process: echo every frame back until a zero-length one."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(_HEADER.size)
    buffer = bytearray(0)
    with sock:
        while True:
            _recv_exact(sock, memoryview(header))
            (size,) = _HEADER.unpack(header)
            fresh, size = size & _FRESH, size & ~_FRESH
            if size == 0:
                return
            if fresh:
                view = _fresh_buffer(size)
            else:
                if size > len(buffer):
                    buffer = bytearray(size)  # reused from frame to frame
                view = memoryview(buffer)[:size]
            _recv_exact(sock, view)
            _send_frame(sock, bytes(header), view)


class RawEcho:
    """A TCP loopback connection to a child process that echoes what it receives."""

    def __init__(self, context: Any) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        self.process = context.Process(target=_echo_child, args=(listener.getsockname()[1],))
        self.process.start()
        try:
            self.sock, _ = listener.accept()
        except BaseException:
            _stop(self.process, 1)
            raise
        finally:
            listener.close()
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._header = bytearray(_HEADER.size)

    def round_trip(self, payload: memoryview, into: memoryview | None) -> None:
        """Send ``payload``, receive its echo into ``into`` (None: fresh buffers both sides)."""
        flag = _FRESH if into is None else 0
        _send_frame(self.sock, _HEADER.pack(payload.nbytes | flag), payload)
        _recv_exact(self.sock, memoryview(self._header))
        _recv_exact(self.sock, _fresh_buffer(payload.nbytes) if into is None else into)

    def close(self) -> None:
        try:
            self.sock.sendall(_HEADER.pack(0))
            self.sock.close()
        except OSError:
            pass
        _stop(self.process)


# ------------------------------------------------------------------------ gloo baseline


def _gloo_child(rank: int, port: int, big_numel: int, number: int, repeat: int,
                big_repeat: int, results: Any) -> None:  # fmt: skip
    """Rank 0 times round trips to rank 1 (which echoes them) and reports the medians."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                                rank=rank, timeout=datetime.timedelta(seconds=60))  # fmt: skip
    except Exception as exc:
        results.put(("error", f"rank {rank}: init_process_group failed: "
                              f"{type(exc).__name__}: {exc}"))  # fmt: skip
        return
    try:
        small = torch.tensor([1.0, 2.0])
        big = torch.randn(big_numel) if rank == 0 else torch.empty(big_numel)
        peer = 1 - rank

        def round_trip(tensor: torch.Tensor) -> None:
            if rank == 0:
                dist.send(tensor, peer)
                dist.recv(tensor, peer)
            else:
                dist.recv(tensor, peer)
                dist.send(tensor, peer)

        small_s = median_seconds(lambda: round_trip(small), number, repeat)
        big_s = median_seconds(lambda: round_trip(big), 1, big_repeat)
        if rank == 0:
            results.put(("ok", small_s, big_s))
    except Exception as exc:
        results.put(("error", f"rank {rank}: {type(exc).__name__}: {exc}"))
    finally:
        dist.destroy_process_group()


def gloo_round_trips(context: Any, big_numel: int, number: int, repeat: int,
                     big_repeat: int) -> tuple[float, float] | str:  # fmt: skip
    """(small round trip, big round trip) in seconds, or why gloo could not run."""
    results = context.Queue()
    port = _free_port()
    processes = [
        context.Process(target=_gloo_child,
                        args=(rank, port, big_numel, number, repeat, big_repeat, results))
        for rank in (0, 1)
    ]  # fmt: skip
    try:
        for process in processes:
            process.start()
        try:
            answer = results.get(timeout=150)
        except queues.Empty:
            return "gloo gave no answer within 150 s"
        if answer[0] != "ok":
            return answer[1]
        return answer[1], answer[2]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        for process in processes:
            if process.pid is not None:
                _stop(process, 5)


# --------------------------------------------------------------------------- benchmarks


def _can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


def _pin(pids: list[int], cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of every process in ``pids``."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:  # a thread that just ended
                pass


def _small_rows(workers: dict[str, Any], raw: RawEcho, number: int, repeat: int,
                with_memory: bool) -> float:  # fmt: skip
    """Rows of figure 1 under the current CPU placement; returns the tcp x + y time."""
    payload = memoryview(bytes(_SMALL_MESSAGE))
    into = memoryview(bytearray(_SMALL_MESSAGE))
    raw_s = median_seconds(lambda: raw.round_trip(payload, into), number * 4, repeat)
    row("raw TCP ping-pong (baseline)", raw_s, "raw TCP ping-pong", raw_s)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    if with_memory:
        plain = median_seconds(lambda: a + b, number * 10, repeat)
        row("plain torch a + b", plain, "raw TCP ping-pong", raw_s)
    tcp_s = 0.0
    for scheme, worker in workers.items():
        if scheme == "memory" and not with_memory:
            continue
        x, y = worker.send(a), worker.send(b)
        seconds = median_seconds(lambda x=x, y=y: x + y, number, repeat)
        row(f"bastion {scheme}: x + y", seconds, "raw TCP ping-pong", raw_s)
        if scheme == "memory":  # the wire encoding without a wire: what serde costs
            with sy.VirtualWorker(id=f"{worker.id}-serialized", serialize=True) as serialized:
                u, v = serialized.send(a), serialized.send(b)
                encoded = median_seconds(lambda u=u, v=v: u + v, number, repeat)
                del u, v
            row("bastion memory serialize=True: x + y", encoded, "raw TCP ping-pong", raw_s)
        if scheme == "tcp":
            tcp_s = seconds
        if scheme != "memory":  # the transport alone: a request with no tensor and no event
            listing = median_seconds(worker.list_objects, number, repeat)
            row(f"bastion {scheme}: list_objects()", listing, "raw TCP ping-pong", raw_s)
        del x, y
    _verdict("tcp x + y / raw ping-pong", tcp_s / raw_s, "<= 3x", tcp_s / raw_s <= 3)
    return tcp_s


def bench_small_op(workers: dict[str, Any], raw: RawEcho, number: int, repeat: int) -> float:
    print("1. small op: x + y on two 2-element float tensors (one request, one reply)")
    print("   a. processes where the scheduler puts them (the default)")
    tcp_s = _small_rows(workers, raw, number, repeat, with_memory=True)
    if not _can_pin():
        return tcp_s
    print("   b. every process pinned to one CPU (hand-offs without waking an idle CPU)")
    pids = [os.getpid(), raw.process.pid]
    pids += [w.process.pid for w in workers.values() if hasattr(w, "process")]
    everywhere = os.sched_getaffinity(0)
    try:
        _pin(pids, {min(everywhere)})
        _small_rows(workers, raw, number, repeat, with_memory=False)
    finally:
        _pin(pids, everywhere)
    return tcp_s


def bench_bulk(workers: dict[str, Any], raw: RawEcho, mib: int, repeat: int) -> float:
    nbytes = mib * _MiB
    print(
        f"2. bulk: send + get of a {mib} MiB float32 tensor "
        f"(GB/s: bytes carried, {2 * mib} MiB for a round trip, {mib} MiB for a clone)"
    )
    tensor = torch.randn(nbytes // 4)
    payload = memoryview(tensor.numpy()).cast("B")
    into = memoryview(torch.empty(nbytes, dtype=torch.uint8).numpy())  # reused, as the child's
    raw_s = median_seconds(lambda: raw.round_trip(payload, into), 1, repeat)
    fresh_s = median_seconds(lambda: raw.round_trip(payload, None), 1, repeat)
    clone_s = median_seconds(tensor.clone, 1, repeat)
    seconds = {
        scheme: median_seconds(lambda w=worker: w.send(tensor).get(), 1, repeat)
        for scheme, worker in workers.items()
    }
    back = workers["tcp"].send(tensor).get()
    assert torch.equal(back, tensor), "the tensor came back changed"
    del back
    there_and_back = 2 * nbytes
    raw_rate = there_and_back / raw_s
    _rate_row("raw sendall/recv_into echo", there_and_back / raw_s, "raw sockets", raw_rate)
    _rate_row("raw echo, fresh buffers", there_and_back / fresh_s, "raw sockets", raw_rate)
    _rate_row("bastion tcp send+get", there_and_back / seconds["tcp"], "raw sockets", raw_rate)
    clone_rate = nbytes / clone_s
    _rate_row("tensor.clone()", clone_rate, "tensor.clone()", clone_rate)
    for scheme in ("shm", "memory"):
        rate = there_and_back / seconds[scheme]
        _rate_row(f"bastion {scheme} send+get", rate, "tensor.clone()", clone_rate)
    _verdict("tcp throughput / raw sockets", raw_s / seconds["tcp"], ">= 0.70",
             raw_s / seconds["tcp"] >= 0.70)  # fmt: skip
    speedup = seconds["tcp"] / seconds["shm"]
    _verdict("shm throughput / tcp throughput", speedup, ">= 3x", speedup >= 3)
    return seconds["tcp"]


def bench_seed_flow(pairs: dict[str, tuple[Any, Any]], number: int, repeat: int) -> None:
    print("3. seed flow: send x and y to M1, z = x + y, z.move(M2), z.get()")
    a, b = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 1])
    expected = a + b

    def flow(m1: Any, m2: Any) -> torch.Tensor:
        x, y = m1.send(a), m1.send(b)
        return (x + y).move(m2).get()

    baseline = None
    for scheme, (m1, m2) in pairs.items():
        assert torch.equal(flow(m1, m2), expected), f"the seed flow went wrong over {scheme}"
        seconds = median_seconds(lambda m1=m1, m2=m2: flow(m1, m2), number, repeat)
        baseline = baseline or seconds
        row(f"bastion {scheme}: one flow", seconds, "bastion memory flow", baseline)


def bench_gloo(context: Any, tcp_small: float, tcp_big: float, mib: int, number: int,
               repeat: int, big_repeat: int) -> None:  # fmt: skip
    print(f"4. torch.distributed gloo on loopback: send/recv round trips (2 elements, {mib} MiB)")
    print(
        "   (two pairs of processes, the faster one is the baseline: gloo's small round "
        "trip is bimodal here)"
    )
    answers = []
    for pair in (1, 2):
        answer = gloo_round_trips(context, mib * _MiB // 4, number, repeat, big_repeat)
        if isinstance(answer, str):
            print(f"  gloo could not run here: {answer}")
            return
        print(
            f"  pair {pair}: small round trip {answer[0] * 1e6:.1f} us, "
            f"{mib} MiB there and back {answer[1] * 1e3:.1f} ms"
        )
        answers.append(answer)
    small_s = min(answer[0] for answer in answers)
    big_s = min(answer[1] for answer in answers)
    there_and_back = 2 * mib * _MiB
    row("gloo small round trip", small_s, "gloo small round trip", small_s)
    row("bastion tcp: x + y", tcp_small, "gloo small round trip", small_s)
    gloo_rate = there_and_back / big_s
    _rate_row(f"gloo {mib} MiB there and back", gloo_rate, "gloo", gloo_rate)
    _rate_row("bastion tcp send+get", there_and_back / tcp_big, "gloo", gloo_rate)


# -------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB and fewer repeats")
    args = parser.parse_args()
    if args.quick:
        number, repeat, mib, big_repeat, flows = 300, 3, 64, 3, 50
    else:
        number, repeat, mib, big_repeat, flows = 1000, 7, 256, 5, 200
    print(f"bastion {sy.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, {platform.machine()}, "
          f"{datetime.date.today()}")  # fmt: skip
    context = multiprocessing.get_context("spawn")  # forking after torch ran threads hangs
    authkey = secrets.token_hex(16)  # shared, so that workers can move objects to each other
    tag = secrets.token_hex(3)
    opened: list[Any] = []
    raw = None
    try:
        raw = RawEcho(context)
        pairs: dict[str, tuple[Any, Any]] = {}
        for scheme in ("memory", "tcp", "shm"):
            pair = []
            for name in ("M1", "M2"):
                worker_id = f"bench-{scheme}-{name}-{tag}"
                if scheme == "memory":
                    worker = sy.VirtualWorker(id=worker_id)
                else:
                    worker = sy.spawn(scheme, id=worker_id, authkey=authkey)
                opened.append(worker)
                pair.append(worker)
            pairs[scheme] = (pair[0], pair[1])
        firsts = {scheme: pair[0] for scheme, pair in pairs.items()}
        tcp_small = bench_small_op(firsts, raw, number, repeat)
        tcp_big = bench_bulk(firsts, raw, mib, big_repeat)
        bench_seed_flow(pairs, flows, repeat)
    finally:
        if raw is not None:
            raw.close()
        for worker in reversed(opened):
            worker.close()
    bench_gloo(context, tcp_small, tcp_big, mib, max(number // 4, 100), repeat, big_repeat)


if __name__ == "__main__":
    main()
