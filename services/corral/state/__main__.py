"""`python -m corral.state`"""

from corral.runtime import run_forever
from corral.state.service import StateService


def main() -> None:
    run_forever(StateService())


if __name__ == "__main__":
    main()
