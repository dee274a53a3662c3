"""The platform's fixed phrases, in the languages it speaks by itself (no LLM needed).

Whatever the platform says on its own — the offline answerer's preamble and "I don't know", the
handoff notices, "<agent> joined", the closing message and its satisfaction question, a voice note
it could not understand — comes from here, in English, Portuguese, Spanish, French and German.
``phrase(key, language, **values)`` picks the conversation's language (a tag such as ``pt-BR``
counts as ``pt``) and falls back to English for any other language; ``{name}`` placeholders are
filled from ``values``.
"""

from __future__ import annotations

from typing import Final

DEFAULT_LANGUAGE: Final = "en"
LANGUAGES: Final = ("en", "pt", "es", "fr", "de")

PHRASES: Final[dict[str, dict[str, str]]] = {
    # The offline answerer's opening line; {owner} is "Acme's" / "our" (see owner()).
    "offline_preamble": {
        "en": "Here is what I found in {owner} documents:",
        "pt": "Eis o que encontrei nos documentos {owner}:",
        "es": "Esto es lo que encontré en los documentos {owner}:",
        "fr": "Voici ce que j'ai trouvé dans les documents {owner} :",
        "de": "Das habe ich in den Dokumenten {owner} gefunden:",
    },
    "offline_footer": {
        "en": "(Automatic answer quoted from the documents; no AI model is connected.)",
        "pt": "(Resposta automática citada dos documentos; nenhum modelo de IA está conectado.)",
        "es": "(Respuesta automática citada de los documentos; no hay ningún modelo de IA conectado.)",
        "fr": "(Réponse automatique citée des documents ; aucun modèle d'IA n'est connecté.)",
        "de": "(Automatische Antwort aus den Dokumenten zitiert; kein KI-Modell ist verbunden.)",
    },
    "sources": {
        "en": "Sources",
        "pt": "Fontes",
        "es": "Fuentes",
        "fr": "Sources",
        "de": "Quellen",
    },
    "page": {"en": "p.", "pt": "p.", "es": "p.", "fr": "p.", "de": "S."},
    # Nothing relevant passed the threshold.
    "dont_know": {
        "en": (
            "I couldn't find anything about that in {owner} documents. I'm an automatic assistant that can "
            "only quote those documents (no AI model is connected), so I don't know the answer."
        ),
        "pt": (
            "Não encontrei nada sobre isso nos documentos {owner}. Sou um assistente automático que só pode "
            "citar esses documentos (nenhum modelo de IA está conectado), por isso não sei a resposta."
        ),
        "es": (
            "No encontré nada sobre eso en los documentos {owner}. Soy un asistente automático que solo puede "
            "citar esos documentos (no hay ningún modelo de IA conectado), así que no sé la respuesta."
        ),
        "fr": (
            "Je n'ai rien trouvé à ce sujet dans les documents {owner}. Je suis un assistant automatique qui "
            "ne peut que citer ces documents (aucun modèle d'IA n'est connecté), je ne connais donc pas la réponse."
        ),
        "de": (
            "Dazu habe ich in den Dokumenten {owner} nichts gefunden. Ich bin ein automatischer Assistent, der "
            "nur diese Dokumente zitieren kann (kein KI-Modell ist verbunden), deshalb kenne ich die Antwort nicht."
        ),
    },
    # The offer of a human after "I don't know"; {keyword} is the tenant's first handoff keyword.
    "offer_human": {
        "en": 'If you would like to talk to a person, write "{keyword}".',
        "pt": 'Se quiser falar com uma pessoa, escreva "{keyword}".',
        "es": 'Si quieres hablar con una persona, escribe "{keyword}".',
        "fr": "Si vous souhaitez parler à une personne, écrivez « {keyword} ».",
        "de": "Wenn Sie mit einem Menschen sprechen möchten, schreiben Sie „{keyword}“.",
    },
    "handoff_notice": {
        "en": "I'm passing you to a member of our team. Someone will reply here as soon as possible.",
        "pt": "Vou passar você para alguém da nossa equipe. Alguém responderá aqui assim que possível.",
        "es": "Te paso con una persona de nuestro equipo. Alguien te responderá aquí lo antes posible.",
        "fr": (
            "Je vous mets en relation avec un membre de notre équipe. Quelqu'un vous répondra ici dès que possible."
        ),
        "de": "Ich verbinde Sie mit einem Mitglied unseres Teams. Jemand antwortet Ihnen hier so bald wie möglich.",
    },
    "waiting_notice": {
        "en": "A member of our team will reply here soon.",
        "pt": "Um membro da nossa equipe responderá aqui em breve.",
        "es": "Una persona de nuestro equipo te responderá aquí pronto.",
        "fr": "Un membre de notre équipe vous répondra ici bientôt.",
        "de": "Ein Mitglied unseres Teams antwortet Ihnen hier in Kürze.",
    },
    "agent_joined": {
        "en": "{agent} joined the conversation.",
        "pt": "{agent} entrou na conversa.",
        "es": "{agent} se unió a la conversación.",
        "fr": "{agent} a rejoint la conversation.",
        "de": "{agent} ist dem Gespräch beigetreten.",
    },
    "closing": {
        "en": "This conversation is now closed. Thank you for contacting us!",
        "pt": "Esta conversa foi encerrada. Obrigado por falar conosco!",
        "es": "Esta conversación se ha cerrado. ¡Gracias por contactarnos!",
        "fr": "Cette conversation est maintenant terminée. Merci de nous avoir contactés !",
        "de": "Dieses Gespräch ist jetzt beendet. Vielen Dank für Ihre Nachricht!",
    },
    "satisfaction_question": {
        "en": "How satisfied are you with the help you received? Reply with a number from 1 (not at all) to 5 (very).",
        "pt": "Qual é a sua satisfação com o atendimento? Responda com um número de 1 (nada) a 5 (muito).",
        "es": "¿Qué tan satisfecho estás con la ayuda recibida? Responde con un número del 1 (nada) al 5 (mucho).",
        "fr": (
            "Êtes-vous satisfait de l'aide reçue ? Répondez par un chiffre de 1 (pas du tout) à 5 (très satisfait)."
        ),
        "de": (
            "Wie zufrieden sind Sie mit der erhaltenen Hilfe? Antworten Sie mit einer Zahl von 1 (gar nicht) "
            "bis 5 (sehr)."
        ),
    },
    "satisfaction_thanks": {
        "en": "Thank you for your feedback!",
        "pt": "Obrigado pela sua avaliação!",
        "es": "¡Gracias por tu opinión!",
        "fr": "Merci pour votre avis !",
        "de": "Vielen Dank für Ihr Feedback!",
    },
    "voice_not_understood": {
        "en": "Sorry, I couldn't understand your voice note. Could you write your message instead?",
        "pt": "Desculpe, não consegui entender a sua mensagem de voz. Pode escrever a sua mensagem?",
        "es": "Lo siento, no pude entender tu nota de voz. ¿Puedes escribir tu mensaje?",
        "fr": "Désolé, je n'ai pas compris votre message vocal. Pouvez-vous l'écrire plutôt ?",
        "de": "Entschuldigung, ich konnte Ihre Sprachnachricht nicht verstehen. Können Sie sie bitte schreiben?",
    },
    "technical_problem": {
        "en": (
            "Sorry, I can't answer right now because of a technical problem. Your message has been kept and "
            "we will get back to you."
        ),
        "pt": (
            "Desculpe, não consigo responder agora por causa de um problema técnico. A sua mensagem foi "
            "guardada e voltaremos a falar com você."
        ),
        "es": (
            "Lo siento, no puedo responder ahora por un problema técnico. Hemos guardado tu mensaje y te responderemos."
        ),
        "fr": (
            "Désolé, je ne peux pas répondre pour le moment à cause d'un problème technique. Votre message a "
            "été conservé et nous reviendrons vers vous."
        ),
        "de": (
            "Entschuldigung, wegen eines technischen Problems kann ich gerade nicht antworten. Ihre Nachricht "
            "wurde gespeichert und wir melden uns bei Ihnen."
        ),
    },
}

# "Acme's documents" / "our documents", as each language says it.
_OWNER: Final[dict[str, tuple[str, str]]] = {
    # language: (with a brand name, without one)
    "en": ("{brand}'s", "our"),
    "pt": ("da {brand}", "da empresa"),
    "es": ("de {brand}", "de la empresa"),
    "fr": ("de {brand}", "de l'entreprise"),
    "de": ("von {brand}", "des Unternehmens"),
}


def base_language(language: str | None) -> str:
    """The language a phrase is written in: ``pt-BR`` -> ``pt``; unknown or empty -> English."""
    code = (language or "").replace("_", "-").split("-")[0].strip().lower()
    return code if code in LANGUAGES else DEFAULT_LANGUAGE


def phrase(key: str, language: str | None, **values: object) -> str:
    """The phrase ``key`` in ``language`` (English when the platform does not speak it), with its
    ``{name}`` placeholders filled from ``values``. An unknown key raises KeyError (a programming error)."""
    texts = PHRASES[key]
    text = texts.get(base_language(language), texts[DEFAULT_LANGUAGE])
    return text.format(**values) if values else text


def owner(brand_name: str, language: str | None) -> str:
    """Whose documents the offline answerer quotes: "Acme's" / "our" in English, "da Acme" in Portuguese."""
    with_brand, without = _OWNER[base_language(language)]
    return with_brand.format(brand=brand_name) if brand_name else without
