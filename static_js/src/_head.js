/* Opens the one closure that wraps every file of the bundle; _tail.js closes it. */
(function (window) {
