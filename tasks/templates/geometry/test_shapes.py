import unittest

from shapes import circle_area, is_square, polygon_sides, rect_perimeter


class TestShapes(unittest.TestCase):
    def test_circle_area(self):
        self.assertAlmostEqual(circle_area(1), 3.14159, places=4)

    def test_rect_perimeter(self):
        self.assertEqual(rect_perimeter(2, 3), 10)

    def test_is_square(self):
        self.assertTrue(is_square(4, 4))

    def test_polygon_sides(self):
        self.assertEqual(polygon_sides("pentagon"), 5)


if __name__ == "__main__":
    unittest.main()
