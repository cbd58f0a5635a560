/** Transport failures, mapped once at the edge (nothing of WebSocket or fetch leaks out). */
export class TransportError extends Error {
  constructor(message, { status = null, closeCode = null, disabled = false } = {}) {
    super(message);
    this.code = "transport_error";
    this.status = status;
    this.closeCode = closeCode;
    this.disabled = disabled; // the WebSocket endpoint is off here: poll
  }
}
