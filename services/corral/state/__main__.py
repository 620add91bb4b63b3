"""`python -m corral.state`"""

from corral.state.service import StateService
from corral.runtime import run_forever


def main() -> None:
    run_forever(StateService())


if __name__ == "__main__":
    main()
