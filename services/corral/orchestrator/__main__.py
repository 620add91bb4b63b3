"""`python -m corral.orchestrator`"""

from corral.orchestrator.service import OrchestratorService
from corral.runtime import run_forever


def main() -> None:
    run_forever(OrchestratorService())


if __name__ == "__main__":
    main()
