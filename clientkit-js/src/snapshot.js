/**
 * Reassembling a snapshot from its chunks (engine/syncdata.py `assemble_snapshot`):
 * the chunks, in index order, are the msgpack of `[position, content]`; the checksum is
 * the sha256 of its canonical encoding. A snapshot that does not verify is refused whole.
 */
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

import { canonical, decodeTyped, plain } from "./msgpack.js";

export class SnapshotChecksumMismatch extends Error {
  constructor(message) {
    super(message);
    this.code = "snapshot_checksum_mismatch";
  }
}

/** chunks: [{index, total, checksum, data: Uint8Array}] -> {position, content, checksum}. */
export function assembleSnapshot(chunks) {
  if (!chunks.length) throw new SnapshotChecksumMismatch("no chunks");
  const { total, checksum } = chunks[0];
  const ordered = [...chunks].sort((a, b) => a.index - b.index);
  if (ordered.length !== total || ordered.some((c, i) => c.index !== i || c.total !== total || c.checksum !== checksum)) {
    throw new SnapshotChecksumMismatch("the chunks do not form one complete snapshot");
  }
  const size = ordered.reduce((n, c) => n + c.data.length, 0);
  const blob = new Uint8Array(size);
  let at = 0;
  for (const c of ordered) {
    blob.set(c.data, at);
    at += c.data.length;
  }
  let typed;
  try {
    typed = decodeTyped(blob);
  } catch {
    throw new SnapshotChecksumMismatch("the snapshot does not decode");
  }
  if (!Array.isArray(typed) || typed.length !== 2) throw new SnapshotChecksumMismatch("the snapshot does not decode");
  if (bytesToHex(sha256(canonical(typed))) !== checksum) {
    throw new SnapshotChecksumMismatch("the snapshot does not match its checksum");
  }
  return { position: plain(typed[0]), content: plain(typed[1]), checksum };
}
