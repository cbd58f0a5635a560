/**
 * WebSocket first; HTTP polling when the WebSocket cannot be opened or keeps failing;
 * back to the WebSocket as soon as a probe connects (clientkit/transports/fallback.py).
 *
 * - the endpoint is disabled (4503 close) or there is no WebSocket: poll now;
 * - `wsFailuresMax` failures in a row (refused, or connections that died within
 *   `healthyAfterMs`): poll;
 * - while polling, the polling connection probes the WebSocket every `probeIntervalMs`; a
 *   successful probe ends it with `upgrade: true`, and the next `open` tries the WebSocket.
 */
import { CLOSE } from "../protocol.js";
import { TransportError } from "./errors.js";
import { PollingConnector } from "./polling.js";
import { WsConnector } from "./ws.js";

export class FallbackConnector {
  constructor(baseUrl, token, { WebSocket = globalThis.WebSocket, fetch = globalThis.fetch?.bind(globalThis), wsFailuresMax = 2,
    healthyAfterMs = 2000, probeIntervalMs = 5000, maxPollIntervalMs = 2000, openTimeoutMs = 5000, pollPath = "/v1/events/poll",
    wsUrl = null, codec = "msgpack" } = {}) {
    this.ws = new WsConnector(baseUrl, token, { WebSocket, openTimeoutMs, url: wsUrl, codec });
    this.poll = new PollingConnector(baseUrl, token, { fetch, maxIntervalMs: maxPollIntervalMs, probe: () => this.probe(),
      probeIntervalMs, path: pollPath });
    this.wsFailures = 0;
    this.wsFailuresMax = wsFailuresMax;
    this.healthyAfterMs = healthyAfterMs;
    this.mode = "ws";
    this.clientId = "";
  }

  async open(clientId = "") {
    this.clientId = clientId;
    if (this.wsFailures < this.wsFailuresMax) {
      try {
        const conn = await this.ws.open(clientId);
        this.mode = "ws";
        return this.track(conn);
      } catch (e) {
        if (!(e instanceof TransportError)) throw e;
        if (e.disabled) this.wsFailures = this.wsFailuresMax;
        else {
          this.wsFailures += 1;
          if (this.wsFailures < this.wsFailuresMax) throw e;
        }
      }
    }
    const conn = await this.poll.open(clientId);
    this.mode = "poll";
    return conn;
  }

  /** Count a WebSocket that ends early (or with 4503) as a failure. */
  track(conn) {
    const opened = Date.now();
    conn.observers.push(({ code, byClient }) => {
      if (byClient) return;
      if (code === CLOSE.DISABLED) this.wsFailures = this.wsFailuresMax;
      else if (Date.now() - opened < this.healthyAfterMs) this.wsFailures += 1;
      else this.wsFailures = 0;
    });
    return conn;
  }

  setToken(token) {
    this.ws.setToken(token);
    this.poll.setToken(token);
  }

  async probe() {
    try {
      const conn = await this.ws.open(this.clientId);
      conn.close();
      this.wsFailures = 0;
      return true;
    } catch {
      return false;
    }
  }
}
