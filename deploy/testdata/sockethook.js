// hookSocketIO calls onEvent(name, arg) for every socket.io event the page
// receives, over the websocket or the long-polling transport: engine.io
// packets separated by \x1e, an event packet being 42[name, arg]. The
// deploy tests inject it before any script of the page runs (socketHook in
// sockethook_test.go), so both dashboards' tests share this one copy.
function hookSocketIO(onEvent) {
  const record = (data) => {
    if (typeof data !== 'string') return;
    for (const pkt of data.split('\x1e')) {
      const m = /^42\d*(\[[\s\S]*\])$/.exec(pkt);
      if (!m) continue;
      let ev;
      try { ev = JSON.parse(m[1]); } catch (e) { continue; }
      if (typeof ev[0] === 'string') onEvent(ev[0], ev[1]);
    }
  };
  const WS = window.WebSocket;
  window.WebSocket = function (...a) {
    const ws = new WS(...a);
    ws.addEventListener('message', e => record(e.data));
    return ws;
  };
  window.WebSocket.prototype = WS.prototype;
  Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (...a) {
    this.addEventListener('load', () => { try { record(this.responseText); } catch (e) {} });
    return open.apply(this, a);
  };
}
