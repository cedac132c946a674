function reverse(s) {
  return s.split('').reverse().join('');
}

function countVowels(s) {
  return (s.match(/[aeiou]/gi) || []).length;
}

module.exports = { reverse, countVowels };
