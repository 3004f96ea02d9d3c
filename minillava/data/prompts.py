"""Instruction prompts for the two training stages, written for this project.

The paper samples one of 11 "describe briefly" prompts per stage-1 image (§4.2, the caption is the answer)
and one of 16 "describe in detail" prompts per detailed-description sample (§3). The lists here have the same
sizes and purpose, in our own words.
"""

BRIEF_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of this picture.",
    "Summarize what you see in a few words.",
    "What does this image show, in one sentence?",
    "Write a brief caption for the image.",
    "Offer a concise summary of the picture.",
    "Tell me briefly what is in the image.",
    "Caption this image.",
    "In a sentence, what is shown here?",
    "Briefly say what the picture contains.",
    "Provide a one-line description of the image.",
)

DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "Give a thorough description of this picture.",
    "What do you see in this image? Describe everything.",
    "Explain the contents of the image in detail.",
    "Write a detailed account of what the picture shows.",
    "Walk me through every object in the image.",
    "Describe each part of this picture carefully.",
    "Give a complete description of the scene.",
    "Tell me everything you can see in this image.",
    "Provide a detailed description of the picture.",
    "What is in this image? Be as detailed as you can.",
    "Describe the layout and the objects of the image.",
    "Paint a detailed picture in words of what is shown.",
    "List and describe the objects in the image and where they are.",
    "Give an elaborate description of the image.",
    "Examine the picture and describe it in detail.",
)

assert len(BRIEF_PROMPTS) == 11 and len(DETAIL_PROMPTS) == 16
