"""`python -m corral.health`"""

from corral.health.service import HealthService
from corral.runtime import run_forever


def main() -> None:
    run_forever(HealthService())


if __name__ == "__main__":
    main()
