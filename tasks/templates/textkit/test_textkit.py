import unittest

from textkit import initials, is_short, slugify, word_count


class TestTextkit(unittest.TestCase):
    def test_slugify(self):
        self.assertEqual(slugify("Hello, World!"), "hello-world")

    def test_word_count(self):
        self.assertEqual(word_count("one two three"), 3)

    def test_is_short(self):
        self.assertTrue(is_short("abcdefghij"))

    def test_initials(self):
        self.assertEqual(initials("ada king lovelace"), "AKL")


if __name__ == "__main__":
    unittest.main()
