const test = require('node:test');
const assert = require('node:assert');
const { reverse, countVowels } = require('./strs');

test('reverse', () => {
  assert.strictEqual(reverse('abc'), 'cba');
});

test('count vowels', () => {
  assert.strictEqual(countVowels('Education'), 5);
});
