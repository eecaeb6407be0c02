// Preloaded into third-party Node servers the tests start: their `listen(PORT)` would bind every interface;
// this pins any listen() given only a port to 127.0.0.1.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    const rest = typeof args[1] === "string" ? args.slice(2) : args.slice(1);
    return listen.call(this, Number(args[0]), "127.0.0.1", ...rest);
  }
  return listen.apply(this, args);
};
