"""Areas and perimeters."""
import math


def circle_area(r):
    return math.pi * r * r


def rect_perimeter(w, h):
    return 2 * (w + h)


def is_square(w, h):
    return w == h


def polygon_sides(name):
    sides = {"triangle": 3, "square": 4, "pentagon": 5}
    return sides[name]
