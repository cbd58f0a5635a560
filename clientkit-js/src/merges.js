/**
 * Merge functions for fields whose concurrent writes combine (engine/records/merges.py).
 *
 * The same three built-ins as the server, with the same validation and the same
 * normalized forms: `counter` (integer increments, identity 0), `set_union` (elements
 * are strings or integers; the accumulator is a sorted array, integers first, then
 * strings: the wire form the server encodes a set to) and `max` (finite numbers, no
 * identity). A page may register more with `MergeRegistry.register`, under the name the
 * server registered its own function with; it must compute what the server's does.
 */

export const NO_INITIAL = Symbol("NO_INITIAL");
export const INT_LIMIT = 2 ** 53;
export const SET_ELEMENTS_MAX = 10_000;

export class MergeFunction {
  constructor(name, fn, { validate = (x) => x, encode = (x) => x, initial = NO_INITIAL } = {}) {
    this.name = name;
    this.fn = fn;
    this.validate = validate;
    this.encode = encode;
    this.initial = initial;
  }

  combine(acc, operand) {
    return acc === NO_INITIAL ? operand : this.fn(acc, operand);
  }
}

function validateIncrement(x) {
  if (!Number.isInteger(x) || x < -INT_LIMIT || x > INT_LIMIT) {
    throw new TypeError("a counter operand is an integer increment");
  }
  return x;
}

function sortElements(values) {
  const ints = values.filter((e) => typeof e !== "string").sort((a, b) => a - b);
  const strs = values.filter((e) => typeof e === "string").sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return ints.concat(strs);
}

function validateElements(x) {
  if (!Array.isArray(x) || x.length > SET_ELEMENTS_MAX) throw new TypeError("a set-union operand is a list of elements");
  const seen = new Set();
  for (const e of x) {
    if (typeof e !== "string" && (!Number.isInteger(e) || e < -INT_LIMIT || e > INT_LIMIT)) {
      throw new TypeError("set elements are strings or integers");
    }
    seen.add(e);
  }
  return sortElements([...seen]);
}

function union(a, b) {
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  return sortElements([...new Set([...a, ...b])]);
}

function validateNumber(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) throw new TypeError("a max operand is a finite number");
  if (Number.isInteger(x) && (x < -INT_LIMIT || x > INT_LIMIT)) throw new RangeError("integer out of range");
  return x === 0 ? 0 : x; // -0 and 0 are one value
}

export const COUNTER = new MergeFunction("counter", (a, b) => a + b, { validate: validateIncrement, initial: 0 });
export const UNION = new MergeFunction("set_union", union, { validate: validateElements, initial: [] });
export const MAX = new MergeFunction("max", (a, b) => (b > a ? b : a), { validate: validateNumber });

export class UnknownMergeFunction extends Error {
  constructor(name) {
    super(`no merge function ${JSON.stringify(name)}`);
    this.code = "unknown_merge_function";
    this.mergeName = name;
  }
}

export class MergeRegistry {
  constructor() {
    this.fns = new Map();
  }

  static withBuiltins() {
    const r = new MergeRegistry();
    for (const mf of [COUNTER, UNION, MAX]) r.fns.set(mf.name, mf);
    return r;
  }

  /** Add a merge function (commutative and associative, as the server's must be). */
  register(name, fn, options = {}) {
    if (!name || name === "lww" || name === "manual" || this.fns.has(name)) {
      throw new Error(`invalid or taken merge name ${JSON.stringify(name)}`);
    }
    const mf = new MergeFunction(name, fn, options);
    this.fns.set(name, mf);
    return mf;
  }

  get(name) {
    const mf = this.fns.get(name);
    if (mf === undefined) throw new UnknownMergeFunction(name);
    return mf;
  }

  has(name) {
    return this.fns.has(name);
  }
}

export const BUILTINS = MergeRegistry.withBuiltins();
