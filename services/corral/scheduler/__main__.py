"""`python -m corral.scheduler`"""

from corral.runtime import run_forever
from corral.scheduler.service import SchedulerService


def main() -> None:
    run_forever(SchedulerService())


if __name__ == "__main__":
    main()
