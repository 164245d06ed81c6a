// The actors a debugger can pick (SPEC §8), and their machines as plain JSON.
//
// The node's actors are found where they live (lvols in their lvstores, copies, NBD exports,
// the scheduler) rather than in a second registry, so 100,000 lvols cost no extra index entry.
// `describeMachine` walks XState's own state-node tree: what the dashboard draws is the machine
// the actor runs, never a hand-copied picture.
import type { AnyActorRef, AnyStateMachine } from 'xstate';
import { fail } from '../errors.ts';
import { toJsonSafe } from './inspector.ts';
import { nbdActorIdPrefix } from './nbdExports.ts';
import type { StorageNode } from './node.ts';
import { nvmeActorId } from './nvmeControllers.ts';
import { nvmfActorId } from './nvmfTarget.ts';
import type { ResolvedLvol } from './registry.ts';
import type { MachineNode, MachineTransition } from './machineShape.ts';
import { schedulerActorId } from './scheduler.ts';

export type { MachineNode, MachineTransition };

export type ActorKind = 'lvol' | 'scheduler' | 'copy' | 'nbd_export' | 'nvmf_subsystem' | 'nvme_controller';

export interface InspectableActor {
  /** The id `inspect_subscribe {actor_id}` filters on (an lvol's UUID, `scheduler`, `copy-N`, `nbd:NAME`). */
  readonly actor_id: string;
  readonly kind: ActorKind;
  /** What a person calls it: `lvs/lvol`, the export name, the copy's source and destination. */
  readonly label: string;
  /** The running actor (reading it starts an lvol actor still waiting for its start slice). */
  readonly actor: AnyActorRef;
  /** Its state value, read without starting anything. */
  value(): unknown;
}

const copyActorIdPrefix = 'copy-';

/** The node's own actors: the scheduler, copies and NBD exports. */
function nodeActors(node: StorageNode): InspectableActor[] {
  const actors: InspectableActor[] = [machineActor(schedulerActorId, 'scheduler', 'background scheduler', node.scheduler.actor)];
  for (const operation of node.copies.operationList()) actors.push(copyActor(operation));
  for (const entry of node.nbd.list()) actors.push(machineActor(`${nbdActorIdPrefix}${entry.exportName}`, 'nbd_export', `NBD export ${entry.exportName}`, entry.actor));
  // The discovery subsystem is always there and never changes: listed only when asked for by id.
  for (const subsystem of node.nvmf.list()) {
    if (!subsystem.isDiscovery) actors.push(machineActor(nvmfActorId(subsystem.nqn), 'nvmf_subsystem', `NVMe-oF subsystem ${subsystem.nqn}`, subsystem.actor));
  }
  for (const entry of node.nvme.list()) actors.push(machineActor(nvmeActorId(entry.request.name), 'nvme_controller', `NVMe controller ${entry.request.name}`, entry.actor));
  return actors;
}

/** Every actor of the node, non-lvol ones first; `limit` bounds the lvols listed (visited in slices). */
export async function listInspectable(node: StorageNode, limit = Number.POSITIVE_INFINITY): Promise<{ actors: InspectableActor[]; lvols_total: number }> {
  const actors = nodeActors(node);
  let listed = 0;
  if (limit > 0) {
    await node.registry.forEachLvolInSlices((resolved) => {
      actors.push(lvolActor(resolved));
      return ++listed < limit;
    });
  }
  return { actors, lvols_total: node.registry.lvolCount };
}

/** One actor by the id the inspector stream uses, or an lvol by alias; -19 when there is none. */
export function findInspectable(node: StorageNode, actorId: string): InspectableActor {
  if (actorId === schedulerActorId) return nodeActors(node)[0]!;
  if (actorId.startsWith(nbdActorIdPrefix)) {
    const exportName = actorId.slice(nbdActorIdPrefix.length);
    const entry = node.nbd.lookup(exportName) ?? fail('ENODEV', `no NBD export ${exportName}`);
    return machineActor(actorId, 'nbd_export', `NBD export ${exportName}`, entry.actor);
  }
  if (actorId.startsWith(nvmfActorId(''))) {
    const nqn = actorId.slice(nvmfActorId('').length);
    const subsystem = node.nvmf.subsystem(nqn) ?? fail('ENODEV', `no NVMe-oF subsystem ${nqn}`);
    return machineActor(actorId, 'nvmf_subsystem', `NVMe-oF subsystem ${nqn}`, subsystem.actor);
  }
  if (actorId.startsWith(nvmeActorId(''))) {
    const name = actorId.slice(nvmeActorId('').length);
    const entry = node.nvme.lookup(name) ?? fail('ENODEV', `no NVMe controller ${name}`);
    return machineActor(actorId, 'nvme_controller', `NVMe controller ${name}`, entry.actor);
  }
  if (actorId.startsWith(copyActorIdPrefix)) {
    const operation = node.copies.operationList().find((candidate) => `${copyActorIdPrefix}${candidate.operationId}` === actorId);
    if (operation) return copyActor(operation);
  }
  return lvolActor(node.resolveLvol(actorId));
}

function machineActor(actorId: string, kind: ActorKind, label: string, actor: AnyActorRef): InspectableActor {
  return { actor_id: actorId, kind, label, actor, value: () => snapshotOf(actor).value };
}

function copyActor(operation: ReturnType<StorageNode['copies']['operationList']>[number]): InspectableActor {
  return machineActor(`${copyActorIdPrefix}${operation.operationId}`, 'copy', `${operation.request.kind} copy ${operation.operationId} → ${operation.request.target.name}`, operation.actor);
}

/**
 * An lvol's actor. After a restart its XState actor may still wait for its start slice: listing
 * it must not start it (100,000 at once would take seconds), so until then its state value is
 * what the machine's first transitions give from the records (the checksum state; io idle).
 */
function lvolActor(resolved: ResolvedLvol): InspectableActor {
  const lvol = resolved.actor;
  return {
    actor_id: resolved.lvol.id,
    kind: 'lvol',
    label: `${resolved.entry.store.name}/${resolved.lvol.name}`,
    get actor() {
      return lvol.actor;
    },
    value: () => (lvol.isStarted ? snapshotOf(lvol.actor).value : { checksum: lvol.checksumState, io: 'idle' }),
  };
}

/** An actor's current snapshot, JSON-able (state value, status, context summary). */
export function snapshotOf(actor: AnyActorRef): { value: unknown; status: unknown; context: unknown } {
  const snapshot = actor.getSnapshot() as { value?: unknown; status?: unknown; context?: unknown };
  return { value: toJsonSafe(snapshot.value), status: snapshot.status, context: toJsonSafe(snapshot.context) };
}

// ---- machine definitions ----

// The parts of XState's StateNode this walk reads (public, but typed loosely in its declarations).
interface StateNodeLike {
  id: string;
  key: string;
  type: MachineNode['type'];
  description?: string;
  initial?: { target: StateNodeLike[] };
  states: Record<string, StateNodeLike>;
  entry: unknown[];
  exit: unknown[];
  invoke: Array<{ src: unknown; id: string }>;
  transitions: Map<string, TransitionLike[]>;
  always?: TransitionLike[];
}

interface TransitionLike {
  eventType: string;
  target?: StateNodeLike[] | undefined;
  guard?: unknown;
  actions: unknown[];
  reenter: boolean;
}

/** The machine's state tree with every transition, as the dashboard's statechart draws it. */
export function describeMachine(machine: AnyStateMachine): MachineNode {
  return describeNode(machine.root as unknown as StateNodeLike);
}

function describeNode(node: StateNodeLike): MachineNode {
  const transitions: MachineTransition[] = [];
  for (const list of node.transitions.values()) for (const transition of list) transitions.push(describeTransition(transition.eventType, transition));
  for (const transition of node.always ?? []) transitions.push(describeTransition('always', transition));
  const initial = node.initial?.target[0]?.key;
  return {
    id: node.id,
    key: node.key,
    type: node.type,
    ...(initial !== undefined ? { initial } : {}),
    entry: node.entry.map(actionName),
    exit: node.exit.map(actionName),
    invoke: node.invoke.map((invoke) => (typeof invoke.src === 'string' ? invoke.src : invoke.id)),
    ...(node.description !== undefined ? { description: node.description } : {}),
    states: Object.values(node.states).map(describeNode),
    transitions,
  };
}

function describeTransition(event: string, transition: TransitionLike): MachineTransition {
  const guard = transition.guard === undefined ? undefined : actionName(transition.guard);
  return {
    event,
    targets: (transition.target ?? []).map((target) => target.id),
    ...(guard !== undefined ? { guard } : {}),
    actions: transition.actions.map(actionName),
    reenter: transition.reenter,
  };
}

/** An action or guard as its name: a string, `{type}`, or a function's name. */
function actionName(action: unknown): string {
  if (typeof action === 'string') return action;
  if (typeof action === 'function') return action.name || 'inline';
  if (action && typeof action === 'object' && 'type' in action && typeof action.type === 'string') return action.type;
  return 'inline';
}

/** The machine an actor runs (its logic), when that logic is a state machine. */
export function machineOf(actor: AnyActorRef): AnyStateMachine {
  const logic = (actor as unknown as { logic?: { root?: unknown } }).logic;
  if (!logic?.root) fail('EINVAL', `actor ${actor.id} does not run a state machine`);
  return logic as unknown as AnyStateMachine;
}
