// The JSON shape of a machine definition as inspect_get_machine serves it. Types only, with no
// imports: the browser dashboard (src/dashboard/statechart.ts) draws from the same declaration.

export interface MachineTransition {
  /** The event type; `always` for eventless transitions, `xstate.done.actor.ID` for invoke results. */
  readonly event: string;
  /** Target state ids (`lvol.checksum.queued`); empty for a targetless (actions-only) transition. */
  readonly targets: string[];
  readonly guard?: string;
  readonly actions: string[];
  readonly reenter: boolean;
}

export interface MachineNode {
  /** The state's id, as XState makes it: the machine id and the path, joined by dots. */
  readonly id: string;
  readonly key: string;
  readonly type: 'atomic' | 'compound' | 'parallel' | 'final' | 'history';
  /** The initial child's key, for compound states. */
  readonly initial?: string;
  readonly entry: string[];
  readonly exit: string[];
  /** Sources of invoked actors (e.g. `clusterStep`). */
  readonly invoke: string[];
  readonly description?: string;
  readonly states: MachineNode[];
  readonly transitions: MachineTransition[];
}
