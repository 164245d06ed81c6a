// The known-answer vectors of test/fixtures/crc64.json: data is described there, built here.
import vectors from '../fixtures/crc64.json' with { type: 'json' };

export { vectors };

export interface Part {
  ascii?: string;
  byte?: number;
  count?: number;
}

/** The bytes a vector part describes: an ASCII string, or a byte repeated `count` times. */
export function materialize(part: Part): Buffer {
  if (part.ascii !== undefined) return Buffer.from(part.ascii, 'ascii');
  return Buffer.alloc(part.count ?? 0, part.byte ?? 0);
}
