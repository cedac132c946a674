const test = require('node:test');
const assert = require('node:assert');
const { isLeapYear, daysInMonth } = require('./dates');

test('leap years', () => {
  assert.strictEqual(isLeapYear(2024), true);
  assert.strictEqual(isLeapYear(1900), false);
});

test('days in month', () => {
  assert.strictEqual(daysInMonth(2, 2024), 29);
  assert.strictEqual(daysInMonth(4, 2023), 30);
});
