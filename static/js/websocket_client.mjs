// ES-module entry of the tickwire browser client. websocket_client.js is a
// plain script that installs globalThis.websocketClient and
// globalThis.TickwireClient (once, however often it is evaluated); this file
// loads it for that side effect and re-exports the same objects, so a page
// that mixes <script> and import shares one client.
import './websocket_client.js';

export const TickwireClient = globalThis.TickwireClient;
export const websocketClient = globalThis.websocketClient;
export default websocketClient;
