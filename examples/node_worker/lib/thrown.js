'use strict';
const util = require('node:util');

/** What a thrown value that is no Error says: a string as it is, anything else as
 * util.inspect shows it (`throw {code: 42}` said "[object Object]", a user trial). */
const thrownText = (value) =>
  typeof value === 'string' ? value : util.inspect(value, { depth: 4, breakLength: Infinity });

module.exports = { thrownText };
