/* Closes the closure opened by _head.js; `this` is the browser's window. */
}(this));
