// The shape of the one method table: every RPC's name, zod params/result, priority and handler.
import type { z } from 'zod';
import type { SerializedJson } from './json64.ts';

/** What a handler may know of the connection that called it (for subscriptions). */
export interface Connection {
  readonly id: number;
  /** Pushes a JSON-RPC notification; returns false when the client is falling behind and it was dropped. */
  notify(method: string, params: unknown): boolean;
  /** Runs `cleanup` once when the connection closes. */
  onClose(cleanup: () => void): void;
}

/**
 * How an RPC relates to running checksums: `priority` operations preempt a conflicting
 * checksum, `background` ones are the checksum computations themselves, `foreground` never conflict.
 */
export type MethodPriority = 'foreground' | 'priority' | 'background';

export interface RpcMethod<P extends z.ZodType = z.ZodType, R extends z.ZodType = z.ZodType> {
  readonly description: string;
  readonly priority: MethodPriority;
  readonly params: P;
  readonly result: R;
  /** The result, or a long one already written as JSON text while it was made (a 100,000-row listing). */
  handler(params: z.output<P>, connection: Connection): Promise<z.input<R> | SerializedJson> | z.input<R> | SerializedJson;
}

export type MethodTable = Readonly<Record<string, RpcMethod>>;

/** Declares one method with full inference of its params and result types. */
export function defineMethod<P extends z.ZodType, R extends z.ZodType>(method: RpcMethod<P, R>): RpcMethod {
  return method as unknown as RpcMethod;
}
