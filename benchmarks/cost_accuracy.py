"""Cost accuracy on "EC2": the cost coiled-lab accrues for a cluster that runs, scales up,
scales down and stops, versus Σ(price × run time) computed independently from each
instance's LaunchTime (moto's DescribeInstances) and the moment its TerminateInstances
request passed the fault proxy; and the estimate shown before launch × wall time versus
the accrued cost. Runs on moto + the EC2 emulator (every VM's bootstrap really runs), with
the Price List API answered by tests/pricelist.py so that every price is known.

Both sides bill per second with EC2's 60 s minimum for Linux. The accrued cost covers the
instances only; the estimate also has the root volumes (EBS), printed apart.
Targets (printed, not asserted): |accrued − Σ| ≤ 1%; estimate × wall time within 5%.

Usage (from the repository root): python benchmarks/cost_accuracy.py [--workers 2] [--up 4] [--down 1] [--hold 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORKER, SCHEDULER = "m6i.xlarge", "m6i.large"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="workers at launch")
    parser.add_argument("--up", type=int, default=4, help="workers after scaling up")
    parser.add_argument("--down", type=int, default=1, help="workers after scaling down")
    parser.add_argument("--hold", type=float, default=60, help="seconds in each phase once it is reached")
    args = parser.parse_args()

    from emulated_aws import emulated_aws

    from tests.aws.conftest import TEST_CONFIG, Moto
    from tests.aws.test_cost import measured_cost, termination_clock

    with emulated_aws("coiled-lab-cost-", {k: v for k, v in TEST_CONFIG.items() if k != "coiled-lab.aws.nanny"}) as aws:
        report(args, aws, Moto(aws.moto_url), termination_clock(aws.proxy), measured_cost)


def report(args, aws, moto, terminated, measured_cost) -> None:
    control = aws.control
    spec = {"backend": "aws", "n_workers": args.workers, "worker_vm_types": [WORKER], "scheduler_vm_type": SCHEDULER,
            "spot_policy": "on-demand"}
    run = control.run

    def workers(cid: str) -> int:
        return len(moto.instances(cid, "worker"))

    def until(predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not reach the phase's size")
            time.sleep(0.2)

    estimates = {n: run(control.estimate({**spec, "n_workers": n}))
                 for n in {args.workers, args.up, args.down}}
    phases = []  # (n_workers, from)
    phases.append((args.workers, time.time()))
    cid = run(control.create(spec))["id"]
    run(control.wait(cid, timeout=300))
    time.sleep(args.hold)
    for n in (args.up, args.down):
        phases.append((n, time.time()))
        run(control.scale(cid, n))
        until(lambda: workers(cid) == n)
        run(control.wait(cid, timeout=300))
        time.sleep(args.hold)
    stop_at = time.time()
    run(control.stop(cid))
    final = run(control.wait(cid, ("stopped",), 120))
    ended = time.time()
    until(lambda: not moto.tagged(cid), 60)

    accrued = final["cost"]["accrued"]
    measured = measured_cost(moto.client("ec2"), cid, terminated)
    bounds = [t for _, t in phases[1:]] + [stop_at]
    by_estimate = sum(estimates[n]["per_hour"] * (end - start) / 3600 for (n, start), end in zip(phases, bounds))
    compute_only = sum((estimates[n]["per_hour"] - estimates[n]["storage"]) * (end - start) / 3600
                       for (n, start), end in zip(phases, bounds))

    est = estimates[args.workers]
    print(f"prices: {SCHEDULER} ${est['scheduler']:.3f}/h, {WORKER} ${est['worker_each']:.3f}/h "
          f"({est['source']}); root volumes ${est['storage'] / (args.workers + 1):.5f}/h each")
    print(f"phases: {' -> '.join(str(n) for n, _ in phases)} workers, {args.hold:g}s held each; "
          f"wall time {stop_at - phases[0][1]:.1f}s to the stop request, {ended - phases[0][1]:.1f}s to stopped")
    print(f"{'instance':<22}{'type':<12}{'run s':>9}{'billed s':>10}{'$':>11}")
    for row in sorted(measured["instances"], key=lambda r: r["seconds"], reverse=True):
        print(f"{row['id']:<22}{row['type']:<12}{row['seconds']:>9.2f}{row['billed']:>10.2f}"
              f"{row['price'] * row['billed'] / 3600:>11.6f}")
    diff = (accrued - measured["cost"]) / measured["cost"]
    print(f"accrued by coiled-lab:              ${accrued:.6f}")
    print(f"Σ price × run time (EC2's clock):   ${measured['cost']:.6f}")
    print(f"relative difference:                {diff:+.3%}   (target ≤ 1%)")
    print(f"estimate × wall time:               ${by_estimate:.6f}   vs accrued {by_estimate / accrued - 1:+.2%}"
          f"   (target within 5%)")
    print(f"  of which compute (no EBS):        ${compute_only:.6f}   vs accrued {compute_only / accrued - 1:+.2%}")
    print(f"cost after stop: {final['cost']}")


if __name__ == "__main__":
    main()
