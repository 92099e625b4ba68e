import type { EvaluationContext, JsonValue, OpenFeatureEventEmitter, Provider, ResolutionDetails, TrackingEventDetails } from '@openfeature/server-sdk';
import type { AbxClient } from '../index.js';

/** OpenFeature (server SDK) over an `AbxClient`; the targeting key is the unit. */
export declare class AbxServerProvider implements Provider {
  constructor(client: AbxClient, options?: { unitAttribute?: string });
  readonly runsOn: 'server';
  readonly metadata: { name: 'abx' };
  readonly events: OpenFeatureEventEmitter;
  readonly hooks: [];
  initialize(): Promise<void>;
  onClose(): Promise<void>;
  resolveBooleanEvaluation(flagKey: string, defaultValue: boolean, context: EvaluationContext): Promise<ResolutionDetails<boolean>>;
  resolveStringEvaluation(flagKey: string, defaultValue: string, context: EvaluationContext): Promise<ResolutionDetails<string>>;
  resolveNumberEvaluation(flagKey: string, defaultValue: number, context: EvaluationContext): Promise<ResolutionDetails<number>>;
  resolveObjectEvaluation<T extends JsonValue>(flagKey: string, defaultValue: T, context: EvaluationContext): Promise<ResolutionDetails<T>>;
  track(trackingEventName: string, context: EvaluationContext, trackingEventDetails: TrackingEventDetails): void;
}
