"""`python -m corral.scheduler`"""

from corral.scheduler.service import SchedulerService
from corral.runtime import run_forever


def main() -> None:
    run_forever(SchedulerService())


if __name__ == "__main__":
    main()
