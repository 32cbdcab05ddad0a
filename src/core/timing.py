"""A stopwatch for the training and test logs."""

import time


class timer:  # lower case: EDSR's name, used the same way
    """Stopwatch that can accumulate several held intervals."""

    def __init__(self) -> None:
        self.acc = 0.0
        self.tic()

    def tic(self) -> None:
        self.t0 = time.perf_counter()

    def toc(self, restart: bool = False) -> float:
        diff = time.perf_counter() - self.t0
        if restart:
            self.t0 = time.perf_counter()
        return diff

    def hold(self) -> None:
        self.acc += self.toc()

    def release(self) -> float:
        ret, self.acc = self.acc, 0.0
        return ret
