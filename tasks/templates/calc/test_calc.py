import unittest

from calc import add, maximum, mean, total_range


class TestCalc(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)

    def test_maximum(self):
        self.assertEqual(maximum([3, 9, 4]), 9)

    def test_total_range(self):
        self.assertEqual(total_range(4), 10)

    def test_mean(self):
        self.assertEqual(mean([2, 4, 6]), 4)


if __name__ == "__main__":
    unittest.main()
