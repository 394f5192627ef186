// ESLint for the polyfill (ES3 scripts that must parse and run in IE8) and the status page.
import js from "@eslint/js";

const es5Methods = [
  "forEach", "lastIndexOf", "map", "filter", "reduce", "reduceRight", "some", "every",
  "bind", "trim", "isArray", "toISOString", "toJSON"
].map((property) => ({property, message: "ES5+ method: IE8 lacks it."})).concat([
  {property: "indexOf", message: "Array#indexOf is ES5, and a rule cannot tell arrays from strings: use String#search."}
]);

const es5Statics = [
  ["Object", "keys"], ["Object", "create"], ["Object", "defineProperty"],
  ["Object", "defineProperties"], ["Object", "getPrototypeOf"], ["Object", "freeze"],
  ["Object", "getOwnPropertyNames"], ["Object", "assign"], ["Date", "now"], ["Array", "from"]
].map(([object, property]) => ({object, property, message: "ES5+ built-in: IE8 lacks it."}));

const es3 = {
  languageOptions: {
    ecmaVersion: 3,
    sourceType: "script",
    globals: {setTimeout: "readonly", clearTimeout: "readonly"}
  },
  rules: {
    ...js.configs.recommended.rules,
    "no-restricted-properties": ["error", ...es5Methods, ...es5Statics],
    // Browser objects some targets lack are reached through window.X, after a check.
    "no-restricted-globals": ["error",
      {name: "JSON", message: "Not in IE6/7 or IE8 quirks mode: use window.JSON after a check."},
      {name: "XMLHttpRequest", message: "Use window.XMLHttpRequest (missing in IE6)."},
      {name: "XDomainRequest", message: "Use window.XDomainRequest (IE8/9 only)."},
      {name: "Promise", message: "IE lacks it."},
      {name: "console", message: "IE8 has no console until the developer tools open."},
      "document", "location", "self", "globalThis"],
    "no-restricted-syntax": ["error",
      {
        selector: "MemberExpression[object.type='MemberExpression'][object.property.name='JSON']",
        message: "Read window.JSON into a variable and check it before use."
      }],
    // IE8 (JScript) leaks the name of a named function expression into the enclosing scope.
    "func-names": ["error", "never"],
    // IE8 counts a trailing comma in an array literal as one more element.
    "comma-dangle": ["error", "never"],
    // ES3 does not allow reserved words as property names: a["catch"], {"default": 1}.
    "dot-notation": ["error", {allowKeywords: false}],
    "quote-props": ["error", "as-needed", {keywords: true}],
    // The parser must find NUL in an id; escaping "/" and "-" in a class keeps old regex parsers safe.
    "no-control-regex": "off",
    "no-useless-escape": "off",
    // The minifier drops the comment that explains an empty catch block.
    "no-empty": ["error", {allowEmptyCatch: true}],
    // ES3 has no catch without a binding.
    "no-unused-vars": ["error", {caughtErrors: "none"}]
  }
};

export default [
  // _head.js and _tail.js only parse once joined: the bundle covers them.
  {ignores: ["src/_head.js", "src/_tail.js"]},
  {
    // The sources one by one. The names one file takes from another (and `window`, the closure's
    // parameter) are checked on the bundle, where they share one closure.
    files: ["src/*.js"],
    ...es3,
    rules: {
      ...es3.rules,
      "no-undef": "off",
      "no-unused-vars": ["error", {vars: "local", caughtErrors: "none"}]
    }
  },
  {files: ["build/*.js"], ...es3},
  {
    // The status page's own script: for current browsers (uPlot needs them), joined with uPlot.
    files: ["status/*.js"],
    languageOptions: {
      ecmaVersion: 2015,
      sourceType: "script",
      globals: {window: "readonly", document: "readonly", JSON: "readonly"}
    },
    rules: js.configs.recommended.rules
  }
];
