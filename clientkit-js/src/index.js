/** Syncline client kit for the browser (and Node): see README.md. */
export { SynclineClient, tokenExpiry, fetchResolution } from "./client.js";
export { SessionCore, State, UnknownConflict, LocalProtocolError, normalizeConflict } from "./core.js";
export { OpQueue, MemoryStore, IndexedDbStore, QueueFull, DEFAULT_LIMIT } from "./queue.js";
export { RecordsReplica } from "./replica.js";
export { ResolutionConfig, InvalidResolutionConfig, collectionOf } from "./resolution.js";
export { MergeRegistry, MergeFunction, NO_INITIAL } from "./merges.js";
export { foldEvent, applyChanges, conflictId, recordValues, recordConflicts, encodeRecordState, decodeRecordState } from "./records.js";
export { assembleSnapshot, SnapshotChecksumMismatch } from "./snapshot.js";
export * as clocks from "./clocks.js";
export { CLOSE, T, message, encodeFrame, decodeFrame } from "./protocol.js";
export { WsConnector } from "./transports/ws.js";
export { PollingConnector } from "./transports/polling.js";
export { FallbackConnector } from "./transports/fallback.js";
export { TransportError } from "./transports/errors.js";
