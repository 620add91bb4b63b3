"""One run of start_system: modules start as soon as everything they depend on is running (all
of them at once with `parallel_startup`, else one at a time `module_start_delay` apart).

An optional module that fails is skipped, and so is everything that needs it; a required one
that fails ends the run with SystemStartError, after the caller has stopped what started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from corral.orchestrator.states import UP_STATES
from corral.orchestrator.supervisor import ModuleSupervisor, StartFailed

__all__ = ["StartRun", "SystemStartError"]


class SystemStartError(Exception):
    """A required module did not start; what had started was stopped again."""


class StartRun:
    def __init__(
        self,
        supervisors: dict[str, ModuleSupervisor],
        order: list[str],
        *,
        parallel: bool,
        delay: float,
        skip: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.supervisors = supervisors
        self.parallel = parallel
        self.delay = delay
        self.skip = skip  # marks a module not started, with the reason
        self.done = {n for n in order if supervisors[n].record.state in UP_STATES}
        self.pending = [n for n in order if n not in self.done]
        self.failed: set[str] = set()
        self.running: dict[str, asyncio.Task[float]] = {}
        self.started: list[str] = []
        self.took: dict[str, float] = {}  # seconds each started module took to come up
        self.skipped: dict[str, str] = {}

    async def run(self) -> None:
        """Until every module is up or skipped; raises SystemStartError (the caller rolls back)."""
        try:
            while self.pending or self.running:
                await self._launch_ready()
                if not self.running:
                    if self.pending:  # nothing can start; cannot happen with a checked graph
                        raise SystemStartError(f"modules {', '.join(self.pending)} cannot start")
                    return
                finished, _ = await asyncio.wait(self.running.values(), return_when=asyncio.FIRST_COMPLETED)
                for name in [n for n, task in self.running.items() if task in finished]:
                    self._collect(name, self.running.pop(name))
        except BaseException:
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            raise

    async def _launch_ready(self) -> None:
        for name in list(self.pending):
            deps = self.supervisors[name].record.descriptor.depends_on
            blocked = [d for d in deps if d in self.failed]
            if blocked:
                self.pending.remove(name)
                self.failed.add(name)
                reason = f"not started: depends on {', '.join(blocked)}, which did not start"
                self.skipped[name] = reason
                await self.skip(name, reason)
            elif all(d in self.done for d in deps) and (self.parallel or not self.running):
                self.pending.remove(name)
                if not self.parallel and self.started and self.delay:
                    await asyncio.sleep(self.delay)
                self.running[name] = asyncio.create_task(self.supervisors[name].start("start_system"))

    def _collect(self, name: str, task: asyncio.Task[float]) -> None:
        exc = task.exception()
        if exc is None:
            self.done.add(name)
            self.started.append(name)
            self.took[name] = task.result()
        elif isinstance(exc, StartFailed) and not self.supervisors[name].record.descriptor.required:
            self.failed.add(name)
            self.skipped[name] = f"optional module did not start: {exc}"
        elif isinstance(exc, StartFailed):
            raise SystemStartError(f"{exc}\n{name} is required, so startup was aborted") from exc
        else:
            raise exc
